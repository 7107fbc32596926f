"""Tests for `runtime.devices`: "auto" resolves to CUDA only where there is one, "cuda" on a
machine without it is one sentence, and bf16 is used only on CUDA with `amp` on.

CUDA's presence is stubbed (`torch.cuda.is_available`), so the checks run the same on any machine.
"""

from __future__ import annotations

import pytest
import torch

from stego_tasks.errors import InvalidInputError
from stego_tasks.runtime.devices import backbone_precision, resolve_device


def test_auto_is_cuda_with_a_gpu_and_cpu_without(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")


def test_an_explicit_device_is_kept_as_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_on_a_machine_without_it_is_one_sentence(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(InvalidInputError, match=rf"^device '{device}' was asked for but this machine has no CUDA GPU; "
                                                 r"set it to 'auto' or 'cpu'\.$"):
        resolve_device(device)


@pytest.mark.parametrize(
    ("device", "amp", "precision"),
    [("cuda", True, "bf16"), (torch.device("cuda", 0), True, "bf16"), ("cuda", False, "fp32"),
     ("cpu", True, "fp32"), (torch.device("cpu"), False, "fp32")],
)
def test_bf16_only_on_cuda_with_amp(device: str | torch.device, amp: bool, precision: str) -> None:
    assert backbone_precision(device, amp) == precision


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "meta", "", "CPU0"])
def test_a_name_that_is_no_device_is_one_sentence(device: str) -> None:
    """torch.device('tpu') raises a RuntimeError (a bug's traceback at the CLI); 'meta' runs nothing."""
    with pytest.raises(InvalidInputError, match=r"is not a device stego can run on; use 'auto', 'cpu', 'cuda' or 'cuda:N'\.$"):
        resolve_device(device)


def test_a_gpu_index_the_machine_lacks_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(InvalidInputError, match=r"device 'cuda:3' names a GPU this machine lacks \(it has 1\)"):
        resolve_device("cuda:3")
