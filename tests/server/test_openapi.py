"""schemathesis over the server's own /openapi.json: generated and mutated requests to every
route (bounded by time, so the run stays about a minute) never get a 5xx."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.server.conftest import API_KEY

pytestmark = pytest.mark.slow


def test_no_request_from_the_schema_gets_a_server_error(flux_server, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", flux_server.url + "/openapi.json",
         "--header", f"Authorization: Bearer {API_KEY}",
         "--checks", "not_a_server_error", "--phases", "coverage,fuzzing", "--max-examples", "10",
         "--max-time", "30", "--workers", "1", "--seed", "1", "--generation-database", "none",
         "--request-timeout", "60", "--no-color"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stdout[-6000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout
    assert "Traceback" not in flux_server.log()
