"""`fgir serve` under load (benchmarks/serve_load.py, a short version here): 8 clients for 10 s on a
tiny GLSim, each request bounded in time; no request may fail and the server's memory may not grow
by more than 10% from the end of the warm-up to the end of the run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "serve_load.py"


@pytest.mark.slow
def test_eight_clients_for_ten_seconds_no_failure_and_memory_within_ten_percent(tmp_path):
    out = tmp_path / "load.json"
    command = [sys.executable, str(SCRIPT), "--model", "tiny", "--clients", "8", "--seconds", "10", "--warmup", "3",
               "--request-timeout", "60", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["failures"] == 0 and report["warmup_failures"] == 0, report["failure_messages"]
    assert report["requests"] >= 8 and report["clients"] == 8 and report["concurrency"] == 1
    assert 0 < report["latency_ms"]["median"] <= report["latency_ms"]["p95"] <= report["latency_ms"]["max"]
    assert abs(report["rss_mb"]["growth"]) <= 0.10, report["rss_mb"]
