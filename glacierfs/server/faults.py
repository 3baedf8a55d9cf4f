"""Reproducible fault injection (reference §5 item 10), driven by ``--faults`` and ``--seed``.

``SPEC`` is a comma-separated list of ``kind=fraction`` with kinds

* ``500``      - 500 ServiceUnavailableException before the request is processed;
* ``throttle`` - 400 ThrottlingException;
* ``408``      - 408 RequestTimeoutException;
* ``reset``    - the connection is reset: half-way through a request body, or half-way
                 through a GetJobOutput response body, otherwise before any response;
* ``corrupt``  - a GetJobOutput body has bytes flipped while the hash header stays correct.

The decision for a request depends only on the seed, the operation name and how many
requests of that operation came before, so the same client run against the same seed
meets the same faults even if other operations interleave differently. Admin requests are
never faulted; ``ops`` (``--faults-ops``) restricts faults to the named operations.
"""

from __future__ import annotations

import logging
import random
import threading
from collections import defaultdict

log = logging.getLogger(__name__)

KINDS = ("500", "throttle", "408", "reset", "corrupt")
OPERATIONS = frozenset({
    "CreateVault", "DescribeVault", "ListVaults", "DeleteVault", "UploadArchive", "DeleteArchive",
    "InitiateMultipartUpload", "UploadMultipartPart", "CompleteMultipartUpload", "AbortMultipartUpload",
    "ListParts", "ListMultipartUploads", "InitiateJob", "DescribeJob", "ListJobs", "GetJobOutput",
    "SetVaultNotifications", "GetVaultNotifications", "DeleteVaultNotifications",
})


class FaultSpecError(ValueError):
    """The ``--faults`` text is malformed."""


def parse_spec(spec: str | None) -> dict[str, float]:
    """``"500=0.05,throttle=0.1"`` -> ``{"500": 0.05, "throttle": 0.1}``; FaultSpecError if bad."""
    result: dict[str, float] = {}
    if not spec:
        return result
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        kind, sep, value = item.partition("=")
        kind = kind.strip()
        if not sep or kind not in KINDS:
            raise FaultSpecError(f"bad fault {item!r}: expected KIND=FRACTION with KIND one of {', '.join(KINDS)}")
        try:
            frac = float(value)
        except ValueError:
            raise FaultSpecError(f"bad fault fraction in {item!r}: not a number") from None
        if not 0.0 <= frac <= 1.0:
            raise FaultSpecError(f"bad fault fraction in {item!r}: must be between 0 and 1")
        result[kind] = frac
    if sum(v for k, v in result.items() if k != "corrupt") > 1.0:
        raise FaultSpecError("the fault fractions (other than corrupt) add up to more than 1")
    return result


def parse_ops(text: str | None) -> set[str] | None:
    """``"UploadArchive,GetJobOutput"`` -> a set of operation names; FaultSpecError if one is unknown."""
    if not text:
        return None
    ops = {o.strip() for o in text.split(",") if o.strip()}
    unknown = sorted(ops - OPERATIONS)
    if unknown:
        raise FaultSpecError(f"unknown operation {unknown[0]!r}; known: {', '.join(sorted(OPERATIONS))}")
    return ops


class FaultPlan:
    """Decides, per request, which fault (if any) to inject."""

    def __init__(self, fractions: dict[str, float], seed: int | None, ops: set[str] | None = None) -> None:
        self.fractions = fractions
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1 << 30)
        self.ops = ops
        self._counts: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self.fractions)

    def draw(self, op: str) -> tuple[str | None, bool]:
        """Returns (request fault or None, corrupt the output?) for the next request of ``op``."""
        if not self.fractions or (self.ops is not None and op not in self.ops):
            return None, False
        with self._lock:
            n = self._counts[op]
            self._counts[op] += 1
        rng = random.Random(f"{self.seed}:{op}:{n}")
        roll = rng.random()
        fault = None
        acc = 0.0
        for kind in ("500", "throttle", "408", "reset"):
            acc += self.fractions.get(kind, 0.0)
            if roll < acc:
                fault = kind
                break
        corrupt = op == "GetJobOutput" and rng.random() < self.fractions.get("corrupt", 0.0)
        if fault or corrupt:
            log.info("injecting fault %s%s into %s #%d", fault or "", " corrupt" if corrupt else "", op, n)
        return fault, corrupt
