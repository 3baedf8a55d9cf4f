"""Vault operations: ListVaults, CreateVault, DescribeVault, DeleteVault and the notification
configuration (reference §2 rows 1-4, 17-19).

Threading: methods run on the request thread of :class:`.request.Request`; state goes through
the store (which serializes metadata access under its own lock).
"""

from __future__ import annotations

import logging

from .apierror import invalid, missing, not_found
from .request import Request
from .wire import (
    EVENTS,
    VAULT_NAME,
    describe_vault,
)

log = logging.getLogger(__name__)


class VaultOps(Request):
    """The vault operations (a mixin of :class:`.httpd.Handler`)."""

    # -- vaults ------------------------------------------------------------------------
    def list_vaults(self) -> None:
        limit = self._limit(10, 10)
        marker = self._query.get("marker") or None
        start = None
        if marker:
            prefix = self.store.arn("")
            if not marker.startswith(prefix) or len(marker) > len(prefix) + 255:
                raise invalid(f"Invalid marker: {marker}")
            start = marker[len(prefix):]
        page, nxt = self._shorten(*self.store.list_vaults(start, limit), key="name")
        self._send_json(200, {
            "Marker": self.store.arn(nxt) if nxt else None,
            "VaultList": [describe_vault(self.store, v) for v in page],
        })

    def create_vault(self, vault: str) -> None:
        if not VAULT_NAME.match(vault):
            raise invalid(f"Invalid vault name: {vault}. Vault names are 1-255 characters from a-z, A-Z, 0-9, '_', '-', '.'")
        self.store.create_vault(vault)
        self._send(201, {"Location": f"/{self._acct()}/vaults/{vault}"})

    def describe_vault(self, vault: str) -> None:
        self._send_json(200, describe_vault(self.store, self.store.vault(vault)))

    def delete_vault(self, vault: str) -> None:
        self.store.delete_vault(vault)
        self._send(204)

    def set_notifications(self, vault: str) -> None:
        self.store.vault(vault)
        body = self._read_json()
        cfg = body.get("vaultNotificationConfig", body) if isinstance(body.get("vaultNotificationConfig"), dict) else body
        topic = cfg.get("SNSTopic")
        events = cfg.get("Events")
        if not topic or not isinstance(topic, str):
            raise missing("Required parameter missing: SNSTopic")
        if not events or not isinstance(events, list):
            raise missing("Required parameter missing: Events")
        for ev in events:
            if ev not in EVENTS:
                raise invalid(f"Invalid event: {ev}. Valid values are {', '.join(EVENTS)}")
        self.store.set_notifications(vault, {"SNSTopic": topic, "Events": list(dict.fromkeys(events))})
        self._send(204)

    def get_notifications(self, vault: str) -> None:
        cfg = self.store.get_notifications(vault)
        if cfg is None:
            raise not_found(f"No notification configuration is set for vault: {self.store.arn(vault)}")
        self._send_json(200, cfg)

    def delete_notifications(self, vault: str) -> None:
        self.store.set_notifications(vault, None)
        self._send(204)
