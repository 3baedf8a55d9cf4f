"""The per-vault local catalog (see :mod:`glacierfs.catalog.catalog`)."""

from glacierfs.catalog.catalog import Catalog
from glacierfs.catalog.records import Archive, ImportStats, JobRecord, Source
from glacierfs.catalog.storage import SCHEMA_VERSION, list_vaults, remove_vault_state, vault_dir
from glacierfs.timeutil import iso_epoch, now_iso

__all__ = [
    "SCHEMA_VERSION", "Archive", "Catalog", "ImportStats", "JobRecord", "Source", "iso_epoch", "list_vaults", "now_iso", "remove_vault_state", "vault_dir",
]
