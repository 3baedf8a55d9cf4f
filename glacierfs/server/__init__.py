"""The local Glacier-compatible server (``glacierfs serve``).

It shares nothing with the client side of glacierfs but :mod:`glacierfs.treehash`.
"""
