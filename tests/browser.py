"""Headless Chromium for tests: render a local page, dump its DOM or take a screenshot.

Each call starts Chromium in its own process group with a throw-away profile and HOME, and
kills that group when it returns, so no browser (renderer, GPU or crashpad process) outlives
a test, even on a timeout.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
SKIP_REASON = "headless Chromium not installed: apt-get install chromium"
# Offline and quiet: no first-run UI, no background fetches, no sync, no QUIC probes.
FLAGS: tuple[str, ...] = (
    "--headless",
    "--no-sandbox",  # root in a container has no user namespaces for the sandbox
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_available() -> bool:
    """Whether the Debian `chromium` binary is installed."""
    return CHROMIUM.is_file() and os.access(CHROMIUM, os.X_OK)


def run_chromium(page: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Open `page` (a local file) in headless Chromium with `FLAGS` plus `args`.

    Args:
        page: HTML file to open via file://.
        args: extra flags, e.g. "--dump-dom" or "--screenshot=PATH".
        timeout: seconds before the whole process group is killed and TimeoutExpired raised.

    Returns:
        The completed process; stdout (text) holds the DOM for --dump-dom.
    """
    scratch = Path(tempfile.mkdtemp(prefix="stego-chromium-"))
    env = {**os.environ, "HOME": str(scratch), "XDG_CONFIG_HOME": str(scratch / "config"),
           "XDG_CACHE_HOME": str(scratch / "cache")}
    command = [str(CHROMIUM), *FLAGS, f"--user-data-dir={scratch / 'profile'}", *args, Path(page).resolve().as_uri()]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        # The browser's helpers share its process group; whatever is left of it goes now.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        if process.poll() is None:
            process.wait(timeout=10)
        shutil.rmtree(scratch, ignore_errors=True)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)
