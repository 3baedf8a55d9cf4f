"""Atomic JSON writes: the temporary names fit the 255-byte limit and a kill's leftovers can be removed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from glacierfs.fsutil import remove_stale_temps, write_json_atomic


def test_a_name_at_the_limit_still_gets_a_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / ("é" * 127)  # 254 bytes: ".NAME.XXXXXXXX.tmp" would not fit
    write_json_atomic(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1}
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_a_killed_write_leaves_a_temporary_file_that_the_owner_removes(tmp_path: Path) -> None:
    """A child killed between mkstemp and rename leaves its temporary file; remove_stale_temps
    deletes exactly it, not the target nor a neighbour's file."""
    target = tmp_path / "state.json"
    neighbour = tmp_path / ".state.json.other"
    neighbour.write_text("x")
    write_json_atomic(target, {"v": 1})
    code = (
        "import os, sys, tempfile; from pathlib import Path; import glacierfs.fsutil as f\n"
        "p = Path(sys.argv[1]); fd, tmp = tempfile.mkstemp(prefix=f._temp_prefix(p), suffix='.tmp', dir=p.parent)\n"
        "os.write(fd, b'{\"v\": 2'); os.kill(os.getpid(), 9)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(target)], check=False)
    assert proc.returncode == -9
    leftovers = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(leftovers) == 1
    assert remove_stale_temps(target) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, neighbour.name])
    assert json.loads(target.read_text()) == {"v": 1}
    assert remove_stale_temps(target) == 0
    assert os.path.exists(neighbour)
