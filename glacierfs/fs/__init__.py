"""The mount: a vault as a filesystem (core without FUSE, plus the thin adapter ``fuse_adapter``).

See ARCHITECTURE.md "The mount core" for the modules, their contracts and their threads.
"""

from glacierfs.fs.datacache import DataCache
from glacierfs.fs.multivault import MultiVaultFS
from glacierfs.fs.types import Attr, FSCore, FSError
from glacierfs.fs.vaultfs import VaultFS

__all__ = ["Attr", "DataCache", "FSCore", "FSError", "MultiVaultFS", "VaultFS"]
