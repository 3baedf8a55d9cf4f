"""glacierfs: a FUSE filesystem, command-line tool and local emulator for Amazon Glacier vaults."""

__version__ = "0.1.0"
