"""The admin hooks for tests and benchmarks, only with ``serve --admin`` (``start_server(admin=True)``).

Under ``/_admin/``, which cannot collide with an account id; never faulted, no version header
needed; under ``--verify-sigv4`` signed like any request; JSON answers. Every value is finite
and bounded (a bad one is 400 and changes nothing):

* ``GET  /_admin/status`` - ``{"url", "now", "account"}``;
* ``GET  /_admin/sns[?topic=ARN]`` - recorded job-completion notifications
  ``{"messages": [{"Topic", "Date", "Message"}]}`` (Message: the DescribeJob JSON as text);
* ``POST /_admin/vaults/{vault}/inventory`` - take the vault's inventory snapshot now (also for a
  never-written vault that has none yet) -> ``{"changed", "InventoryDate"}``;
* ``POST /_admin/inventory`` - the periodic run now: every vault written since its inventory;
* ``POST /_admin/jobs/complete[?job_id=ID][&due=1][&status=Failed]`` - complete every in-progress
  job (or one, or only those due) -> ``{"completed": [ids]}``;
* ``POST /_admin/clock/advance?seconds=N`` - move the virtual clock (job delays, retention,
  upload expiry, inventory schedule all follow) and run what became due -> ``{"now"}``;
  0 <= N <= ``MAX_ADVANCE`` and the clock at most ``MAX_CLOCK_OFFSET`` ahead;
* ``POST /_admin/vaults/{vault}/populate?count=N&size=S[&snapshot=1]`` (or the same keys plus
  ``descriptions`` in a JSON body) - add N archives whose bodies are generated
  deterministically (no upload, no disk) -> ``{"count", "archive_ids" (null above 1000)}``;
* ``POST /_admin/hold?ops=OP[,OP]`` - hold every request of those operations before it takes
  effect (:mod:`.hold`) -> ``{"ops", "waiting"}``; ``GET /_admin/held`` - the same answer
  (``waiting``: held requests per operation); ``POST /_admin/release[?drop=1]`` - stop holding,
  the held requests go on (with ``drop``: their connections are reset, nothing took effect)
  -> ``{"released": N}``.

Threading: runs on a request thread; the store serializes what it changes.
"""

from __future__ import annotations

import logging
import math

from .apierror import ApiError, invalid
from .clock import iso_ms
from .request import Request
from .wire import (
    MAX_ADVANCE,
    MAX_ARCHIVE,
    MAX_CLOCK_OFFSET,
    MAX_POPULATE,
    MAX_POPULATE_BYTES,
    check_printable,
    parse_uint,
)

log = logging.getLogger(__name__)


class AdminOps(Request):
    """The admin hooks (a mixin of :class:`.httpd.Handler`)."""

    def _admin(self, method: str, segs: list[str]) -> None:
        """Test and tooling hooks (only with ``serve --admin``); never faulted, no version header needed,
        signed like any request under ``--verify-sigv4``."""
        q = self._query
        store = self.store
        if self.options.sigv4 is not None:
            self._check_signature(method, "Admin")
        if method == "GET" and segs == ["status"]:
            self._send_json(200, {"url": self.server.url, "now": iso_ms(store.now()), "account": store.settings.account})
            return
        if method == "GET" and segs == ["held"]:
            self._send_json(200, self.options.holds.held())
            return
        if method == "GET" and segs == ["sns"]:
            self._send_json(200, {"messages": store.sns_messages(q.get("topic"))})
            return
        if method != "POST":
            raise ApiError(400, "BadRequest", f"Unknown admin request: {method} {self.path}")
        if len(segs) == 3 and segs[0] == "vaults" and segs[2] == "inventory":
            changed = store.snapshot(segs[1], force=True)
            v = store.vault(segs[1])
            self._send_json(200, {"changed": changed, "InventoryDate": iso_ms(v["inv_date"])})
        elif segs == ["hold"]:
            from .faults import FaultSpecError, parse_ops

            try:
                ops = parse_ops(q.get("ops"))
            except FaultSpecError as exc:
                raise invalid(str(exc)) from None
            if not ops:
                raise invalid("ops must name one or more operations")
            self.options.holds.hold(ops)
            self._send_json(200, self.options.holds.held())
        elif segs == ["release"]:
            self._send_json(200, {"released": self.options.holds.release(drop=q.get("drop") in ("1", "true"))})
        elif segs == ["inventory"]:
            self._send_json(200, {"vaults": store.snapshot_all()})
        elif segs == ["jobs", "complete"]:
            job_id = q.get("job_id") or q.get("id")
            due_only = q.get("due") in ("1", "true")
            status = q.get("status", "Succeeded")
            if status not in ("Succeeded", "Failed"):
                raise invalid("status must be Succeeded or Failed")
            done = store.complete_jobs(force=not due_only, job_id=job_id, fail=status == "Failed")
            self._send_json(200, {"completed": done})
        elif segs == ["clock", "advance"]:
            try:
                seconds = float(q.get("seconds", "0"))
            except ValueError:
                raise invalid("seconds must be a number") from None
            if not (math.isfinite(seconds) and 0 <= seconds <= MAX_ADVANCE):
                raise invalid(f"seconds must be a finite number from 0 to {MAX_ADVANCE:.0f}")
            if store.clock.offset + seconds > MAX_CLOCK_OFFSET:
                raise invalid(f"the virtual clock may run at most {MAX_CLOCK_OFFSET:.0f} seconds ahead")
            store.clock.advance(seconds)
            store.periodic()
            self._send_json(200, {"now": iso_ms(store.now())})
        elif len(segs) == 3 and segs[0] == "vaults" and segs[2] == "populate":
            body = self._read_json()
            try:
                count = parse_uint(str(q.get("count", body.get("count", 1))), "count")
                size = parse_uint(str(q.get("size", body.get("size", 1024))), "size")
            except ApiError:
                raise invalid("count and size must be integers") from None
            if not (0 <= count <= MAX_POPULATE and 1 <= size <= MAX_ARCHIVE and count * size <= MAX_POPULATE_BYTES):
                raise invalid(f"count must be 0-{MAX_POPULATE}, size 1-{MAX_ARCHIVE} and count*size at most"
                              f" {MAX_POPULATE_BYTES}")
            descriptions = body.get("descriptions") or []
            if not isinstance(descriptions, list) or not all(isinstance(d, str) for d in descriptions):
                raise invalid("descriptions must be a list of strings")
            for d in descriptions:
                check_printable(d, "archive description")
            ids = store.populate(segs[1], count, size, descriptions)
            if q.get("snapshot") in ("1", "true") or body.get("snapshot"):
                store.snapshot(segs[1], force=True)
            self._send_json(200, {"count": len(ids), "archive_ids": ids if len(ids) <= 1000 else None})
        else:
            raise ApiError(400, "BadRequest", f"Unknown admin request: {method} {self.path}")

