"""``glacierfs export``: a vault into S3 objects, streamed, verified, resumable, sharded.

* :mod:`~glacierfs.export.plan`     - selection, keys, metadata, shards, part sizes, prices, the dry run
* :mod:`~glacierfs.export.s3`       - the S3 seam (:class:`~glacierfs.export.s3.ObjectStore`) over boto3
* :mod:`~glacierfs.export.state`    - per-archive export state (job, upload id, parts), SQLite
* :mod:`~glacierfs.export.stream`   - one archive: ranged GetJobOutput -> S3 parts, verified
* :mod:`~glacierfs.export.run`      - the run: paced jobs, transfers, progress, --delete-source
* :mod:`~glacierfs.export.manifest` - ``--manifest`` CSV

Dependencies point one way: nothing here imports cli, commands or mount (the command adapter
is :mod:`glacierfs.exportcmd`).
"""
