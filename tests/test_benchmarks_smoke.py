"""The benchmark scripts run: each ``--smoke`` mode exits 0 and prints its table.

Only that they work (a few seconds each, numbers meaningless); the real runs are
``./scripts/bench`` (see BENCHMARKS.md).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = [
    "bench_ingest.py",
    "bench_scale.py",
    "bench_replay.py",
    "bench_query.py",
    "bench_ceiling.py",
    "bench_dashboard.py",
    "bench_postgres.py",
    "bench_workers.py",
    "bench_cpu.py",
]
NEEDS_WRK = {
    "bench_ingest.py",
    "bench_scale.py",
    "bench_query.py",
    "bench_ceiling.py",
    "bench_postgres.py",
    "bench_workers.py",
    "bench_cpu.py",
}
TITLES = {
    "bench_ingest.py": "## Ingest",
    "bench_scale.py": "## Footprint",
    "bench_replay.py": "## Replay",
    "bench_query.py": "## Query",
    "bench_ceiling.py": "## Ingest ceilings",
    "bench_dashboard.py": "## Dashboard",
    "bench_postgres.py": "## PostgreSQL",
    "bench_workers.py": "## Workers",
    "bench_cpu.py": "## CPU per ingested event",
}


@pytest.mark.parametrize("script", SCRIPTS)
def test_smoke(script: str) -> None:
    if script in NEEDS_WRK and shutil.which("wrk") is None:
        pytest.skip("wrk is not installed (apt-get install -y wrk)")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / script), "--smoke"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert TITLES[script] in proc.stdout, proc.stdout
    table_rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert len(table_rows) >= 3, proc.stdout
    assert "nan" not in proc.stdout, proc.stdout
