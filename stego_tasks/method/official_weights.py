"""Backbone weights published as a plain file at a URL (DINO's own releases), not on the hub.

STEGO's ViT-S/8 is `dino_deitsmall8_300ep_pretrain.pth` (300 epochs), which timm does not
host (its `.dino` tag is the 800-epoch file). Such weights resolve like the hub ones:
a local file the user names, then torch's hub cache (`$TORCH_HOME/hub/checkpoints/<file>`,
where `torch.hub.load_state_dict_from_url` would keep it, so a file put there by hand or by
the reference code is found), then a download to that cache when the machine is online.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse


def hub_checkpoint_dir() -> Path:
    """torch's hub checkpoint folder, read at call time so TORCH_HOME set later is honoured."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether one TCP connect to the URL's host answers within `timeout` seconds (no request is sent)."""
    parsed = urlparse(url)
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    try:
        socket.create_connection((parsed.hostname, port), timeout=timeout).close()
    except OSError:
        return False
    return True


def _offline() -> bool:
    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("STEGO_OFFLINE", ""))
    return any(flag.upper() in {"1", "ON", "YES", "TRUE"} for flag in flags)


def find_or_download(url: str) -> tuple[Path | None, str, str]:
    """Locate the file behind `url` in torch's hub cache, downloading it there when online.

    Args:
        url: the official download address; its last path component is the file name.

    Returns:
        (path or None, source "hub-cache" / "hub-download", reason it is missing when path is None).
    """
    filename = Path(urlparse(url).path).name
    cached = hub_checkpoint_dir() / filename
    if cached.is_file():
        return cached, "hub-cache", ""
    if _offline():
        return None, "", "offline (HF_HUB_OFFLINE or STEGO_OFFLINE is set)"
    if not reachable(url):
        return None, "", f"{urlparse(url).hostname} cannot be reached from this machine"
    import torch

    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(cached), progress=False)
    except Exception as err:  # noqa: BLE001 - any network failure means "not available"
        return None, "", f"download failed ({type(err).__name__})"
    return cached, "hub-download", ""
