"""Checks of a SQLite file made by the tests themselves, with plain sqlite3
(not through plane's store, whose own checks are under test)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def integrity(path: Path) -> list[str]:
    """What ``PRAGMA integrity_check`` says of the file at ``path`` (``["ok"]`` if sound)."""
    conn = sqlite3.connect(path)
    try:
        return [str(row[0]) for row in conn.execute("PRAGMA integrity_check")]
    finally:
        conn.close()


def integrity_ok(path: Path) -> bool:
    return integrity(path) == ["ok"]
