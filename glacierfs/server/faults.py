"""Reproducible fault injection (reference §5 item 10), driven by ``--faults`` and ``--seed``.

``SPEC`` is a comma-separated list of ``kind=fraction`` with kinds

* ``500``      - 500 ServiceUnavailableException before the request is processed;
* ``throttle`` - 400 ThrottlingException;
* ``408``      - 408 RequestTimeoutException;
* ``reset``    - the connection is reset: half-way through a request body, or half-way
                 through a GetJobOutput response body, otherwise before any response;
* ``corrupt``  - a GetJobOutput body has bytes flipped while the hash header stays correct;
* ``closed``   - 400 NoLongerSupportedException (the API closed to new customers on 2025-12-15);
* ``capacity`` - 503 InsufficientCapacityException (type Server), only on an InitiateJob of
                 an archive-retrieval with Tier Expedited;
* ``policy``   - 400 PolicyEnforcedException, only on an InitiateJob of an archive-retrieval
                 with Tier Standard (the default tier);
* ``slow``     - the response (whatever it is) is held back ``slow_seconds`` (``--slow-seconds``)
                 before it is sent.

``500``, ``throttle``, ``408``, ``reset`` and ``closed`` exclude each other (their fractions
may add up to at most 1); ``corrupt``, ``capacity``, ``policy`` and ``slow`` are drawn
independently on top. ``capacity`` and ``policy`` are drawn for every InitiateJob but only
take effect on a valid request of their tier (checked after the request's own validation),
so ``capacity=1`` fails every Expedited archive retrieval and nothing else.

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
from typing import NamedTuple

log = logging.getLogger(__name__)

KINDS = ("500", "throttle", "408", "reset", "corrupt", "closed", "capacity", "policy", "slow")
EXCLUSIVE = ("500", "throttle", "408", "reset", "closed")  # at most one of these per request
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
    if sum(v for k, v in result.items() if k in EXCLUSIVE) > 1.0:
        raise FaultSpecError(f"the fractions of {', '.join(EXCLUSIVE)} add up to more than 1")
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


class Draw(NamedTuple):
    """The faults of one request: ``fault`` is one of EXCLUSIVE or None; the flags are independent."""

    fault: str | None = None
    corrupt: bool = False  # GetJobOutput only
    capacity: bool = False  # InitiateJob only; applies to Expedited archive retrievals
    policy: bool = False  # InitiateJob only; applies to Standard archive retrievals
    slow: bool = False


NO_FAULT = Draw()


class FaultPlan:
    """Decides, per request, which fault (if any) to inject."""

    def __init__(self, fractions: dict[str, float], seed: int | None, ops: set[str] | None = None,
                 slow_seconds: float = 2.0) -> None:
        self.fractions = fractions
        self.seed = seed if seed is not None else random.SystemRandom().randrange(1 << 30)
        self.ops = ops
        self.slow_seconds = slow_seconds
        self._counts: dict[str, int] = defaultdict(int)
        self._lock = threading.Lock()

    @property
    def active(self) -> bool:
        return bool(self.fractions)

    def draw(self, op: str) -> Draw:
        """The faults for the next request of ``op``."""
        if not self.fractions or (self.ops is not None and op not in self.ops):
            return NO_FAULT
        with self._lock:
            n = self._counts[op]
            self._counts[op] += 1
        rng = random.Random(f"{self.seed}:{op}:{n}")
        roll = rng.random()
        fault = None
        acc = 0.0
        for kind in EXCLUSIVE:
            acc += self.fractions.get(kind, 0.0)
            if roll < acc:
                fault = kind
                break
        # Always consume the same rolls in the same order (given op), so that adding one kind
        # to a spec does not shift the draws of the others.
        corrupt = op == "GetJobOutput" and rng.random() < self.fractions.get("corrupt", 0.0)
        capacity = policy = False
        if op == "InitiateJob":
            capacity = rng.random() < self.fractions.get("capacity", 0.0)
            policy = rng.random() < self.fractions.get("policy", 0.0)
        slow = rng.random() < self.fractions.get("slow", 0.0)
        draw = Draw(fault, corrupt, capacity, policy, slow)
        if draw != NO_FAULT:
            flags = [k for k in ("corrupt", "capacity", "policy", "slow") if getattr(draw, k)]
            log.info("injecting fault %s into %s #%d", " ".join(([fault] if fault else []) + flags), op, n)
        return draw
