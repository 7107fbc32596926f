"""Tests for stego_tasks.method.official_weights: weights published at a URL are looked up in torch's
hub cache (wherever TORCH_HOME says, even when set late), downloaded there only when online and the
host answers, and otherwise come back as no file with the reason; `reachable` makes one TCP connect
to the URL's host and port (loopback sockets made here stand in for a server).

No test touches the network: downloads and connections are stubbed or go to 127.0.0.1.
"""

import socket
from pathlib import Path

import pytest
import torch

import stego_tasks.method.official_weights as official
from stego_tasks.method.backbone import create_backbone
from stego_tasks.method.official_weights import find_or_download, hub_checkpoint_dir, reachable
from stego_tasks.method.registry import DINO_VITS8_300EP_URL
from tests.method import test_backbone as backbone_tests
from tests.method.test_backbone import OFFICIAL_300EP, _features_of

# The backbone tests' fixtures, fixtures of this module too: an offline hub (autouse) and a
# random ViT-S/8 as DINO's official file.
offline_hub = backbone_tests.offline_hub
vits8_300ep_state = backbone_tests.vits8_300ep_state

URL = "https://weights.example.org/releases/v1/net_pretrain.pth"


def test_300ep_auto_finds_the_file_in_torch_hub_cache(vits8_300ep_state, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(vits8_300ep_state, cache / OFFICIAL_300EP)
    backbone = create_backbone("dino_vits8_300ep")
    assert backbone.weights_source == "hub-cache", backbone.weights_source
    images = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(backbone(images), _features_of(vits8_300ep_state, images), atol=1e-5, rtol=1e-5)


def test_300ep_downloads_from_the_official_url_when_online(vits8_300ep_state, tmp_path: Path, monkeypatch) -> None:
    import stego_tasks.method.official_weights as official

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    calls = []

    def fake_download(url: str, dst: str, progress: bool = True) -> None:
        calls.append(url)
        torch.save(vits8_300ep_state, dst)

    monkeypatch.setattr(official, "reachable", lambda url, timeout=3.0: True)
    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    backbone = create_backbone("dino_vits8_300ep")
    assert calls == [DINO_VITS8_300EP_URL], calls
    assert calls[0].endswith("/" + OFFICIAL_300EP)
    assert backbone.weights_source == "hub-download"
    assert (tmp_path / "torch" / "hub" / "checkpoints" / OFFICIAL_300EP).is_file(), "the download lands in the hub cache"


@pytest.fixture
def torch_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """TORCH_HOME in tmp_path, both offline flags cleared; returns the hub checkpoint folder it implies."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("STEGO_OFFLINE", raising=False)
    return tmp_path / "torch" / "hub" / "checkpoints"


def _no_download(*args: object, **kwargs: object) -> None:
    raise AssertionError("a download was attempted")


def test_the_cache_folder_follows_torch_home_set_after_import(torch_home):
    assert hub_checkpoint_dir() == torch_home, f"hub checkpoint folder {hub_checkpoint_dir()}"


def test_a_cached_file_is_found_without_any_connection(torch_home, monkeypatch):
    torch_home.mkdir(parents=True)
    (torch_home / "net_pretrain.pth").write_bytes(b"weights")
    monkeypatch.setattr(official, "reachable", _no_download)
    assert find_or_download(URL) == (torch_home / "net_pretrain.pth", "hub-cache", ""), "cached file not found"


@pytest.mark.parametrize(("flag", "value"), [("HF_HUB_OFFLINE", "1"), ("STEGO_OFFLINE", "yes"), ("STEGO_OFFLINE", "TRUE"),
                                             ("HF_HUB_OFFLINE", "on")])
def test_an_offline_flag_gives_no_file_and_says_why(torch_home, monkeypatch, flag, value):
    monkeypatch.setenv(flag, value)
    monkeypatch.setattr(official, "reachable", _no_download)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    assert find_or_download(URL) == (None, "", "offline (HF_HUB_OFFLINE or STEGO_OFFLINE is set)")


def test_an_unreachable_host_gives_no_file_and_names_the_host(torch_home, monkeypatch):
    monkeypatch.setenv("STEGO_OFFLINE", "0")  # a flag that is not set to a true value
    monkeypatch.setattr(official, "reachable", lambda url, timeout=3.0: False)
    monkeypatch.setattr(torch.hub, "download_url_to_file", _no_download)
    assert find_or_download(URL) == (None, "", "weights.example.org cannot be reached from this machine")


def test_a_failed_download_gives_no_file_and_the_error_s_kind(torch_home, monkeypatch):
    def failing(url: str, dst: str, progress: bool = True) -> None:
        raise ConnectionResetError("peer went away")

    monkeypatch.setattr(official, "reachable", lambda url, timeout=3.0: True)
    monkeypatch.setattr(torch.hub, "download_url_to_file", failing)
    assert find_or_download(URL) == (None, "", "download failed (ConnectionResetError)")
    assert not (torch_home / "net_pretrain.pth").exists(), "a failed download left a file in the cache"


def test_a_host_that_listens_is_reachable_and_a_closed_port_is_not():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        assert reachable(f"http://127.0.0.1:{port}/file.pth", timeout=2.0), "a listening loopback port"
    assert not reachable(f"http://127.0.0.1:{port}/file.pth", timeout=2.0), "the port was closed"


@pytest.mark.parametrize(("url", "address"), [("https://h.example/a.pth", ("h.example", 443)),
                                              ("http://h.example/a.pth", ("h.example", 80)),
                                              ("https://h.example:8443/a.pth", ("h.example", 8443))])
def test_the_connect_goes_to_the_url_s_host_and_its_scheme_s_port(monkeypatch, url, address):
    calls: list[tuple[tuple[str, int], float]] = []

    def refuse(target: tuple[str, int], timeout: float) -> socket.socket:
        calls.append((target, timeout))
        raise ConnectionRefusedError

    monkeypatch.setattr(socket, "create_connection", refuse)
    assert reachable(url, timeout=1.5) is False, "a refused connect must read as unreachable"
    assert calls == [(address, 1.5)], f"connects {calls}"
