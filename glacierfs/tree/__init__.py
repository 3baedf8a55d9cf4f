"""Whole-tree commands: sync, check, restore, import-journal (issue 11).

* :mod:`.scan`     walks a local tree (excludes, skipped files) and views a vault subtree
* :mod:`.sync`     plans and runs ``glacierfs sync`` (several files in flight)
* :mod:`.check`    ``glacierfs check``: local tree hashes on all cores vs the catalog
* :mod:`.restore`  ``glacierfs restore``: select, plan, price, retrieve in batches, download
* :mod:`.pricing`  the documented, user-overridable price table and time estimates
* :mod:`.journal`  reads an mt-aws-glacier journal into the catalog

Nothing here imports cli, commands or mount; :mod:`glacierfs.treecmds` is the CLI adapter.
"""
