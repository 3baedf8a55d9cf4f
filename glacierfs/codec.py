"""Archive description <-> path and mtime: write one format, read every dialect, make names safe.

Glacier archives have no names, only a description of at most 1,024 printable ASCII characters
(README "Choices worth knowing", Names, lists the dialects read). This module is the one place that knows how
tools encode file names into descriptions.

Writing (:func:`encode_description`) uses mt-aws-glacier's ``mt2`` format::

    "mt2 " + base64url-without-padding(compact JSON {"filename": PATH, "mtime": "YYYYMMDDTHHMMSSZ"})

with keys sorted and the path's UTF-8 bytes raw in the JSON (``ensure_ascii=False``), byte for byte
what mt-aws-glacier writes, so mt-aws-glacier can read glacierfs vaults and rebuild its journal
from them. Any UTF-8 path round-trips exactly. ``mtime`` has **whole-second precision** (UTC,
rounded down): sub-second parts are lost, which is why the mount reports whole-second mtimes for
archives. When ``mtime`` is None the ``mtime`` key is omitted (glacierfs reads that back; mt-aws-glacier
needs the key, so callers should pass the file's mtime). A path that is not valid UTF-8 (lone
surrogates) or an encoding longer than 1,024 characters raises :class:`UsageError` rather than
writing a description that loses the name.

Reading (:func:`decode_description`) never raises: each dialect is tried in turn (mt2, mt1,
FastGlacier v4/v3/v1, CloudBerry/MSP360 JSON, QNAP JSON); any decode failure means "not this
dialect" and falls through, finally to plain text (the description itself is the name), and an
empty description decodes to ``path=None`` (the caller names it after the archive id).

Safety (:func:`safe_relpath`) turns whatever a description decoded to into a relative,
'/'-separated path that can neither escape a download directory nor break the mount:

* ``/`` is the only separator. ``\\`` is a legal character in POSIX names (and a file written into
  the mount as ``a\\b`` must come back as ``a\\b``), so it is kept literally; a Windows path from a
  plain-text description therefore shows up as one file name, which is safe.
* leading ``/``, empty components and ``.`` are dropped; ``..`` becomes the visible name ``%2E%2E``
  (it never climbs, and ``../x`` stays distinguishable from ``x``).
* C0 controls, DEL and C1 controls (including NUL, CR, LF, TAB) become ``%XX`` of their UTF-8 bytes;
  lone surrogates (undecodable bytes smuggled in by ``surrogateescape`` or ``\\udXXX`` JSON escapes)
  become ``%XX`` of the original byte, or ``%EF%BF%BD`` when there is none.
* a component longer than 255 UTF-8 bytes is cut at a character boundary and gets ``~`` + 8 hex
  digits of the SHA-256 of the full component (plus its extension), so two long names that share a
  prefix stay distinct.
* the result is never empty: with nothing left, the (sanitized) archive id is the name.

safe_relpath is deliberately not injective (``a/../b`` and ``%2E%2E/b``...); the catalog gives every
archive a unique display name anyway (:func:`variant_name`, duplicate rule below).

Duplicates: several archives may decode to the same path (re-uploads are common). The archive with
the newest creation date (ties: the smallest archive id) keeps the plain name, every other one is
shown as :func:`variant_name` - ``photo.jpg`` -> ``photo~AbCdEfGh.jpg`` where ``AbCdEfGh`` are the
first 8 characters of its archive id. The variant depends only on the name and the archive id, so
it is stable whatever else is in the vault; the catalog asks for a longer prefix in the unlikely
event that a variant collides with another name.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from glacierfs.errors import UsageError

log = logging.getLogger(__name__)

MAX_DESCRIPTION = 1024
MAX_COMPONENT_BYTES = 255
DOTDOT = "%2E%2E"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MTIME_RE = re.compile(r"\s*(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z\s*")


@dataclass(frozen=True, slots=True)
class Decoded:
    """What a description says: the raw (unsafe!) path, mtime in epoch seconds, and the dialect.

    ``dialect`` is one of ``mt2``, ``mt1``, ``fastglacier-v4`` (``-v3``, ``-v1``, ...),
    ``cloudberry``, ``qnap``, ``plain``, ``empty``. ``path`` is None only for ``empty``.
    """

    path: str | None
    mtime: float | None
    dialect: str


# ---------------------------------------------------------------------------------------------
# mtime helpers


def format_mtime(mtime: float) -> str:
    """``YYYYMMDDTHHMMSSZ`` (UTC, whole seconds rounded down) as mt2, FastGlacier and CloudBerry use."""
    try:
        dt = _EPOCH + timedelta(seconds=int(mtime // 1))
    except (OverflowError, ValueError) as exc:
        raise UsageError(f"mtime {mtime!r} is out of range for an archive description") from exc
    return f"{dt.year:04d}{dt.month:02d}{dt.day:02d}T{dt.hour:02d}{dt.minute:02d}{dt.second:02d}Z"


def parse_mtime(text: object) -> float | None:
    """Epoch seconds of ``YYYYMMDDTHHMMSSZ``, or None when ``text`` is not such a timestamp."""
    if not isinstance(text, str):
        return None
    if len(text) != 16 or text[8] != "T" or text[15] != "Z":
        m = _MTIME_RE.fullmatch(text)  # the slow, whitespace-tolerant path
        if m is None:
            return None
        text = "".join(m.groups()[:3]) + "T" + "".join(m.groups()[3:]) + "Z"
    digits = text[:8] + text[9:15]
    if not (digits.isascii() and digits.isdigit()):
        return None
    try:
        dt = datetime(
            int(text[0:4]),
            int(text[4:6]),
            int(text[6:8]),
            int(text[9:11]),
            int(text[11:13]),
            int(text[13:15]),
            tzinfo=UTC,
        )
    except ValueError:
        return None
    return (dt - _EPOCH).total_seconds()


# ---------------------------------------------------------------------------------------------
# writing


def encode_description(path: str, mtime: float | None) -> str:
    """The ``mt2`` description for ``path`` (stored as given) and ``mtime``.

    Raises :class:`UsageError` when the path is empty or not valid UTF-8, or when the description
    would be longer than 1,024 characters (Glacier's limit; never silently truncated).
    """
    if not isinstance(path, str) or not path:
        raise UsageError("cannot store an empty path in an archive description")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(
            f"path {path!r} is not valid UTF-8 and cannot be stored in an archive description"
        ) from None
    data: dict[str, str] = {"filename": path}
    if mtime is not None:
        data["mtime"] = format_mtime(mtime)
    raw = json.dumps(data, ensure_ascii=False, separators=(",", ":"), sort_keys=True).encode("utf-8")
    desc = "mt2 " + base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")
    if len(desc) > MAX_DESCRIPTION:
        raise UsageError(
            f"path {path!r} is too long for an archive description: it encodes to {len(desc)} characters,"
            f" Glacier allows {MAX_DESCRIPTION} (about 700 ASCII characters of path)"
        )
    return desc


# ---------------------------------------------------------------------------------------------
# reading


def _b64(text: str, urlsafe: bool) -> bytes:
    """Decode base64 strictly after removing whitespace and restoring padding; ValueError if not."""
    text = "".join(text.split())
    if not text:
        raise ValueError("empty base64")
    text = text.rstrip("=")
    text += "=" * (-len(text) % 4)
    if urlsafe:
        return base64.b64decode(text, altchars=b"-_", validate=True)
    return base64.b64decode(text, validate=True)


def _mt_json(raw: bytes, dialect: str) -> Decoded | None:
    data = json.loads(raw.decode("utf-8"))
    if not isinstance(data, dict):
        return None
    filename = data.get("filename")
    if not isinstance(filename, str) or not filename:
        return None
    return Decoded(filename, parse_mtime(data.get("mtime")), dialect)


def _decode_mt(desc: str) -> Decoded | None:
    kind, _, payload = desc.partition(" ")
    raw = _b64(payload, urlsafe=True)
    if kind == "mt2":
        return _mt_json(raw, "mt2")
    # mt1: the JSON's UTF-8 bytes were UTF-8 encoded once more (as if they were latin-1).
    try:
        once = raw.decode("utf-8").encode("latin-1")
    except (UnicodeDecodeError, UnicodeEncodeError):
        once = raw  # a writer that did not double-encode: still readable
    return _mt_json(once, "mt1")


_FG_TAG = {tag: re.compile(rf"<{tag}>(.*?)</{tag}>", re.S) for tag in ("v", "p", "lm", "Path")}


def _decode_fastglacier(desc: str) -> Decoded | None:
    if desc.startswith("<m>"):
        if not desc.endswith("</m>"):
            return None
        mv = _FG_TAG["v"].search(desc)
        mp = _FG_TAG["p"].search(desc)
        if mv is None or mp is None:
            return None
        version = mv.group(1).strip()
        if not version.isdigit():
            return None
        path = _b64(mp.group(1), urlsafe=False).decode("utf-8")
        if not path:
            return None
        mlm = _FG_TAG["lm"].search(desc)
        mtime = parse_mtime(mlm.group(1)) if mlm else None
        return Decoded(path, mtime, f"fastglacier-v{int(version)}")
    if desc.startswith("<ArchiveMetadata>"):
        if not desc.endswith("</ArchiveMetadata>"):
            return None
        mp = _FG_TAG["Path"].search(desc)
        if mp is None:
            return None
        path = _b64(mp.group(1), urlsafe=False).decode("utf-8")
        return Decoded(path, None, "fastglacier-v1") if path else None
    return None


def _decode_json_dialects(desc: str) -> Decoded | None:
    data = json.loads(desc)
    if not isinstance(data, dict):
        return None
    lower = {k.lower(): v for k, v in data.items() if isinstance(k, str)}
    path = lower.get("path")
    if not isinstance(path, str) or not path:
        return None
    if "utcdatemodified" in lower or "flags" in lower:
        # CloudBerry / MSP360: the path is UTF-7 (plain ASCII passes through, '+' starts a run).
        try:
            path = path.encode("ascii").decode("utf-7")
        except (UnicodeEncodeError, UnicodeDecodeError):
            log.debug("CloudBerry path is not UTF-7, kept as is: %r", path)
        if not path:
            return None
        return Decoded(path, parse_mtime(lower.get("utcdatemodified")), "cloudberry")
    return Decoded(path, None, "qnap")


def decode_description(description: str | None) -> Decoded:
    """The path, mtime and dialect a description encodes. Never raises: unknown means plain text."""
    if not description or not isinstance(description, str):
        return Decoded(None, None, "empty")
    desc = description.strip()
    if not desc:
        return Decoded(None, None, "empty")
    try:
        decoded: Decoded | None = None
        if desc.startswith(("mt2 ", "mt1 ")):
            decoded = _decode_mt(desc)
        elif desc.startswith("<"):
            decoded = _decode_fastglacier(desc)
        elif desc.startswith("{"):
            decoded = _decode_json_dialects(desc)
        if decoded is not None:
            return decoded
    except (ValueError, binascii.Error, UnicodeError, TypeError, RecursionError) as exc:
        log.debug("description %.60r is not its apparent dialect (%s): plain text", desc, exc)
    return Decoded(description, None, "plain")


# ---------------------------------------------------------------------------------------------
# safe names

_UNSAFE_CHAR_RE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escape_char(m: re.Match[str]) -> str:
    ch = m.group(0)
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape'd byte
        return f"%{code - 0xDC00:02X}"
    if 0xD800 <= code <= 0xDFFF:  # any other lone surrogate: no byte to show
        return "%EF%BF%BD"
    return "".join(f"%{b:02X}" for b in ch.encode("utf-8"))


def _split_ext(name: str) -> tuple[str, str]:
    """(stem, extension with its dot); dotfiles and long or odd 'extensions' have none."""
    dot = name.rfind(".")
    if dot <= 0 or dot == len(name) - 1:
        return name, ""
    ext = name[dot:]
    if len(ext) > 16 or " " in ext:
        return name, ""
    return name[:dot], ext


def _truncate_utf8(text: str, limit: int) -> str:
    """The longest prefix of ``text`` whose UTF-8 encoding fits in ``limit`` bytes."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    return data[:limit].decode("utf-8", "ignore")


def _shorten(component: str) -> str:
    if len(component) <= MAX_COMPONENT_BYTES // 4:  # cannot exceed 255 bytes: skip the encode
        return component
    data = component.encode("utf-8")
    if len(data) <= MAX_COMPONENT_BYTES:
        return component
    tag = "~" + hashlib.sha256(data).hexdigest()[:8]
    stem, ext = _split_ext(component)
    room = MAX_COMPONENT_BYTES - len(tag) - len(ext.encode("utf-8"))
    return _truncate_utf8(stem, room) + tag + ext


def _safe_id(archive_id: str | None) -> str:
    text = re.sub(r"[^A-Za-z0-9_.-]", "_", archive_id or "")
    text = text.lstrip(".") or "unnamed-archive"
    return _truncate_utf8(text, MAX_COMPONENT_BYTES)


def safe_relpath(raw: str | None, archive_id: str) -> str:
    """A safe, relative, '/'-separated, never-empty path for a decoded ``raw`` path (rules above)."""
    parts: list[str] = []
    if raw:
        if _UNSAFE_CHAR_RE.search(raw):
            raw = _UNSAFE_CHAR_RE.sub(_escape_char, raw)
        for comp in raw.split("/"):
            if not comp or comp == ".":
                continue
            if comp == "..":
                comp = DOTDOT
            parts.append(_shorten(comp))
    if not parts:
        return _safe_id(archive_id)
    return "/".join(parts)


def variant_name(name: str, archive_id: str, length: int = 8) -> str:
    """The distinct, stable name of a duplicate: ``photo.jpg`` -> ``photo~<id[:length]>.jpg``.

    ``name`` may be a path; only its last component changes. Characters of the archive id other
    than ``[A-Za-z0-9_-]`` become ``_``. The result stays within 255 UTF-8 bytes per component.
    """
    head, sep, base = name.rpartition("/")
    tag = "~" + re.sub(r"[^A-Za-z0-9_-]", "_", archive_id[:length] if length > 0 else archive_id)
    if tag == "~":
        tag = "~_"
    stem, ext = _split_ext(base)
    room = MAX_COMPONENT_BYTES - len(tag) - len(ext.encode("utf-8"))
    return head + sep + _truncate_utf8(stem, room) + tag + ext
