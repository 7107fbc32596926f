"""`shared_prefect_server`: one real local server for a pipeline run, gone afterwards."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request

from tests.conftest import ISOLATION, REPO

SCRIPT = """
import json, os, sys, urllib.request
from flows.prefect_server import shared_prefect_server
with shared_prefect_server() as url:
    with urllib.request.urlopen(url + "/health", timeout=5) as response:
        healthy = response.status == 200
    print(json.dumps({"url": url, "env": os.environ.get("PREFECT_API_URL"), "healthy": healthy}))
print(json.dumps({"env_after": os.environ.get("PREFECT_API_URL")}))
"""


def _run(env: dict[str, str]) -> list[dict]:
    import json

    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"the script failed:\n{result.stderr[-3000:]}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


def test_starts_one_server_exports_its_url_and_stops_it(tmp_path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(ISOLATION)
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    inside, after = _run(env)
    assert inside["healthy"], f"the server did not answer at {inside['url']}"
    assert inside["url"].startswith("http://127.0.0.1:") and inside["env"] == inside["url"], (
        f"PREFECT_API_URL must point the stages at the server: {inside}"
    )
    assert after["env_after"] is None, "PREFECT_API_URL must be unset again after the run"
    try:
        urllib.request.urlopen(inside["url"] + "/health", timeout=2)
    except OSError:
        pass
    else:
        raise AssertionError(f"the server at {inside['url']} still answers after the run")
    assert (tmp_path / "prefect-home").is_dir(), "the server must use the caller's PREFECT_HOME"


def test_an_existing_api_url_is_used_as_it_is() -> None:
    env = {**os.environ, **ISOLATION, "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    script = "from flows.prefect_server import shared_prefect_server\nwith shared_prefect_server() as url: print(url)"
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert result.stdout.strip() == "http://127.0.0.1:9/api", f"got {result.stdout!r} {result.stderr[-500:]!r}"


FLOW_SCRIPT = """
import logging
from flows.prefect_server import shared_prefect_server
with shared_prefect_server():
    from prefect import flow, get_run_logger

    @flow(name="shared-server-check")
    def check() -> int:
        for index in range(50):
            get_run_logger().info("line %d", index)
        return 7

    assert check() == 7
print("done")
"""


def test_a_flow_run_leaves_no_unsent_logs_behind(tmp_path) -> None:
    """Logs still queued when the run ends are sent before the server stops, not at exit to a dead one."""
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.update(ISOLATION)
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    result = subprocess.run([sys.executable, "-c", FLOW_SCRIPT], cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0 and result.stdout.strip().endswith("done"), f"the flow failed:\n{result.stderr[-3000:]}"
    assert "Error logging to API" not in result.stderr, f"logs were flushed to a stopped server:\n{result.stderr[-2000:]}"
