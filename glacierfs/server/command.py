"""``glacierfs serve`` argument registration (placeholder until the server lands)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="run the local Glacier-compatible server")
    p.set_defaults(func=lambda args: 1)
