"""Description codec: mt2 round trip, every dialect we read, hostile paths, duplicate names."""

from __future__ import annotations

import base64
import json
import random

import pytest

from glacierfs.codec import (
    DOTDOT,
    MAX_DESCRIPTION,
    Decoded,
    decode_description,
    encode_description,
    safe_relpath,
    variant_name,
)
from glacierfs.errors import UsageError

DOC_MT2 = "mt2 eyJmaWxlbmFtZSI6InN1Yi9ow6lsbG8tw7xuw69jb2RlLnR4dCIsIm10aW1lIjoiMjAyNjExMjVUMTUzMjQ1WiJ9"
DOC_MT2_EPOCH = 1795620765.0  # 2026-11-25T15:32:45Z
AID = "QmFzZTY0LWFyY2hpdmUtaWQtd2l0aC1tYW55LWNoYXJhY3RlcnM" + "x" * 87


def _b64url(raw: bytes, pad: bool = False) -> str:
    text = base64.urlsafe_b64encode(raw).decode()
    return text if pad else text.rstrip("=")


# --------------------------------------------------------------------------------- writing


def test_encode_matches_the_documented_example_byte_for_byte() -> None:
    assert encode_description("sub/héllo-ünïcode.txt", DOC_MT2_EPOCH) == DOC_MT2
    assert encode_description("sub/héllo-ünïcode.txt", DOC_MT2_EPOCH + 0.999) == DOC_MT2


def test_encoded_description_is_printable_ascii_without_padding() -> None:
    desc = encode_description("a/b c/ü€😀.bin", 0.0)
    assert desc.startswith("mt2 ")
    assert all(0x20 <= ord(c) <= 0x7E for c in desc)
    assert "=" not in desc


def _random_path(rng: random.Random) -> str:
    alphabet = "abcXYZ09 ._-~+%\\'\"(),;:!?#@&=[]{}éüßñ€中文😀ℕ\u200b\u00a0\t"
    parts = []
    for _ in range(rng.randint(1, 5)):
        parts.append("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 20))))
    return "/".join(parts)


def test_round_trip_random_paths_and_mtimes() -> None:
    rng = random.Random(20261125)
    for _ in range(2000):
        path = _random_path(rng)
        mtime = float(rng.randint(-(2**31), 2**34))
        decoded = decode_description(encode_description(path, mtime))
        assert decoded == Decoded(path, mtime, "mt2"), path


def test_round_trip_any_unicode_code_point() -> None:
    rng = random.Random(7)
    for _ in range(500):
        chars = []
        while len(chars) < 30:
            cp = rng.randint(1, 0x10FFFF)
            if 0xD800 <= cp <= 0xDFFF:
                continue
            chars.append(chr(cp))
        path = "".join(chars)
        assert decode_description(encode_description(path, 0)).path == path


def test_mtime_is_whole_seconds_rounded_down() -> None:
    assert decode_description(encode_description("f", 1000.75)).mtime == 1000.0
    assert decode_description(encode_description("f", -0.5)).mtime == -1.0


def test_no_mtime_round_trips_as_none() -> None:
    desc = encode_description("f.txt", None)
    assert decode_description(desc) == Decoded("f.txt", None, "mt2")


def test_too_long_raises_usage_error_naming_path_and_limit() -> None:
    path = "d/" + "x" * 800
    with pytest.raises(UsageError) as info:
        encode_description(path, 0)
    assert path in str(info.value)
    assert str(MAX_DESCRIPTION) in str(info.value)
    # just at the limit is fine
    longest = 0
    for n in range(600, 800):
        try:
            longest = len(encode_description("y" * n, 0))
        except UsageError:
            break
    assert 600 < n < 800
    assert MAX_DESCRIPTION - 4 < longest <= MAX_DESCRIPTION


@pytest.mark.parametrize("path", ["", "bad\udcffbytes"])
def test_unencodable_paths_raise(path: str) -> None:
    with pytest.raises(UsageError):
        encode_description(path, 0)


# --------------------------------------------------------------------------------- reading


def test_decode_documented_mt2() -> None:
    assert decode_description(DOC_MT2) == Decoded("sub/héllo-ünïcode.txt", DOC_MT2_EPOCH, "mt2")


def test_mt2_with_padding_escapes_and_any_key_order() -> None:
    raw = b'{"mtime":"20120821T170824Z","filename":"caf\\u00e9/\\ud83d\\ude00.txt"}'
    for pad in (True, False):
        d = decode_description("mt2 " + _b64url(raw, pad=pad))
        assert d.path == "café/😀.txt"
        assert d.mtime == 1345568904.0
        assert d.dialect == "mt2"


def test_mt2_with_bad_mtime_keeps_the_path() -> None:
    raw = json.dumps({"filename": "x", "mtime": "yesterday"}).encode()
    assert decode_description("mt2 " + _b64url(raw)) == Decoded("x", None, "mt2")


def test_mt1_double_utf8() -> None:
    raw = json.dumps({"filename": "dir/héllo.txt", "mtime": "20130101T000000Z"}, ensure_ascii=False)
    twice = raw.encode("utf-8").decode("latin-1").encode("utf-8")
    d = decode_description("mt1 " + _b64url(twice))
    assert d == Decoded("dir/héllo.txt", 1356998400.0, "mt1")


def test_fastglacier_v4_documented_example() -> None:
    desc = "<m><v>4</v><p>Z2xhY2llci1kZy5wZGY=</p><lm>20120821T170824Z</lm></m>"
    assert decode_description(desc) == Decoded("glacier-dg.pdf", 1345568904.0, "fastglacier-v4")


def test_fastglacier_whitespace_ce_and_v3() -> None:
    p = base64.b64encode("Fotos/été 2012/IMG_1.jpg".encode()).decode()
    desc = f"  <m><v> 4 </v><p> {p[:10]} {p[10:]} </p><lm>20120821T170824Z</lm><ce>C:E:abc:12</ce></m>  "
    assert decode_description(desc) == Decoded("Fotos/été 2012/IMG_1.jpg", 1345568904.0, "fastglacier-v4")
    desc3 = f"<m><v>3</v><p>{p}</p><lm>20120821T170824Z</lm><ce>C:E:abc</ce></m>"
    assert decode_description(desc3).dialect == "fastglacier-v3"
    nopad = p.rstrip("=")
    assert decode_description(f"<m><v>4</v><p>{nopad}</p></m>") == Decoded(
        "Fotos/été 2012/IMG_1.jpg", None, "fastglacier-v4"
    )


def test_fastglacier_v1() -> None:
    p = base64.b64encode(b"backup/db.sql").decode()
    assert decode_description(f"<ArchiveMetadata><Path>{p}</Path></ArchiveMetadata>") == Decoded(
        "backup/db.sql", None, "fastglacier-v1"
    )


@pytest.mark.parametrize("key", ["Path", "path", "PATH"])
def test_cloudberry_utf7_and_key_case(key: str) -> None:
    utf7 = "Docs/héllo wörld+1.txt".encode("utf-7").decode("ascii")
    desc = json.dumps({key: utf7, "UTCDateModified": "20140102T030405Z", "Flags": 0})
    assert decode_description(desc) == Decoded("Docs/héllo wörld+1.txt", 1388631845.0, "cloudberry")


def test_qnap_json() -> None:
    assert decode_description('{"path": "/sample/1234.pdf", "type": "file"}') == Decoded(
        "/sample/1234.pdf", None, "qnap"
    )


@pytest.mark.parametrize(
    "desc",
    [
        "my archive1",
        "./backups/../x.tar",
        "mt2 !!!not-base64!!!",
        "mt2 " + _b64url(b"[1,2,3]"),
        "mt2 " + _b64url(b'{"filename": ""}'),
        "mt2 " + _b64url(b"\xff\xfe"),
        "<m><v>4</v><p>@@@</p></m>",
        "<m><v>x</v><p>YQ==</p></m>",
        "<m><v>4</v><p>YQ==</p>",
        '{"path": 5}',
        "{not json",
        "[" * 5000,
        "C:\\Users\\me\\file.txt",
    ],
)
def test_failures_fall_through_to_plain(desc: str) -> None:
    assert decode_description(desc) == Decoded(desc, None, "plain")


@pytest.mark.parametrize("desc", ["", None])
def test_empty_description(desc: str | None) -> None:
    d = decode_description(desc)
    assert d.path is None and d.dialect == "empty"
    assert safe_relpath(d.path, AID) == AID


def test_decode_never_raises_on_random_junk() -> None:
    rng = random.Random(3)
    prefixes = ["mt2 ", "mt1 ", "<m>", "<ArchiveMetadata>", "{", ""]
    for _ in range(3000):
        body = "".join(chr(rng.randint(0x20, 0x7E)) for _ in range(rng.randint(0, 60)))
        d = decode_description(rng.choice(prefixes) + body)
        assert isinstance(d, Decoded)


# --------------------------------------------------------------------------------- safe names


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("a/b/c.txt", "a/b/c.txt"),
        ("/etc/passwd", "etc/passwd"),
        ("//a//b/", "a/b"),
        ("./a/./b", "a/b"),
        ("../../etc/passwd", f"{DOTDOT}/{DOTDOT}/etc/passwd"),
        ("a/../b", f"a/{DOTDOT}/b"),
        ("..", DOTDOT),
        ("...", "..."),
        ("a\\b\\c", "a\\b\\c"),
        ("nul\x00byte", "nul%00byte"),
        ("line\nbreak\ttab\r", "line%0Abreak%09tab%0D"),
        ("del\x7fc1\x85", "del%7Fc1%C2%85"),
        ("bad\udcffbyte", "bad%FFbyte"),
        ("lone\ud800", "lone%EF%BF%BD"),
        ("ünï/😀", "ünï/😀"),
        (" spaced ", " spaced "),
    ],
)
def test_safe_relpath(raw: str, expected: str) -> None:
    assert safe_relpath(raw, AID) == expected


@pytest.mark.parametrize("raw", [None, "", "/", "//", ".", "./.", "/./"])
def test_safe_relpath_never_empty(raw: str | None) -> None:
    assert safe_relpath(raw, AID) == AID
    assert safe_relpath(raw, "") == "unnamed-archive"
    assert safe_relpath(raw, "../x/y") == "_x_y"


def test_long_components_are_truncated_distinctly() -> None:
    a = "é" * 200 + "A.txt"
    b = "é" * 200 + "B.txt"
    sa, sb = safe_relpath(f"d/{a}", AID), safe_relpath(f"d/{b}", AID)
    assert sa != sb
    for s in (sa, sb):
        head, name = s.split("/")
        assert head == "d"
        assert len(name.encode()) <= 255
        assert name.endswith(".txt")
    assert safe_relpath(f"d/{a}", AID) == sa  # stable
    exact = "x" * 255
    assert safe_relpath(exact, AID) == exact


def test_safe_relpath_properties_on_random_input() -> None:
    rng = random.Random(11)
    alphabet = ["a", "b", "/", ".", "..", "\\", "\x00", "\n", "\udc80", "é", "😀", " ", "x" * 300]
    for _ in range(3000):
        raw = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12)))
        s = safe_relpath(raw, AID)
        assert s and not s.startswith("/")
        parts = s.split("/")
        for part in parts:
            assert part not in ("", ".", "..")
            assert len(part.encode("utf-8")) <= 255
            assert not any(ord(c) < 0x20 or 0x7F <= ord(c) <= 0x9F for c in part)
        s.encode("utf-8")  # no surrogates left


def test_variant_name() -> None:
    assert variant_name("photo.jpg", AID) == f"photo~{AID[:8]}.jpg"
    assert variant_name("dir/photo.jpg", AID) == f"dir/photo~{AID[:8]}.jpg"
    assert variant_name(".bashrc", AID) == f".bashrc~{AID[:8]}"
    assert variant_name("README", AID) == f"README~{AID[:8]}"
    assert variant_name("archive.tar.gz", AID) == f"archive.tar~{AID[:8]}.gz"
    assert variant_name("f.jpg", "ab/+=cdefgh") == "f~ab___cde.jpg"
    assert variant_name("f.jpg", AID, length=16) == f"f~{AID[:16]}.jpg"
    assert variant_name("f.jpg", AID) == variant_name("f.jpg", AID)
    assert variant_name("f.jpg", AID) != variant_name("f.jpg", "Z" + AID)
    long = "y" * 255
    assert len(variant_name(long, AID).encode()) <= 255
    assert variant_name(long, AID) != variant_name(long, "Z" + AID)
