"""Helpers shared by test modules (no fixtures with side effects at import)."""
