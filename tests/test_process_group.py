"""The torch.distributed backend follows the device the run actually uses, not whether a GPU exists."""

from __future__ import annotations

import torch
import torch.distributed as dist

from classifiers import training
from runtime.device import process_group_backend


def test_backend_follows_the_device():
    assert process_group_backend(torch.device("cpu")) == "gloo"
    assert process_group_backend(torch.device("cuda")) == "nccl"
    assert process_group_backend(torch.device("cuda", 1)) == "nccl"


def test_cpu_run_on_a_gpu_machine_joins_with_gloo(monkeypatch):
    """device: cpu under torchrun on a machine with CUDA: nccl would fail on the first CPU all_reduce."""
    joined: list[str] = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend: joined.append(backend))
    monkeypatch.setenv("WORLD_SIZE", "2")
    before = torch.get_num_threads()
    try:
        _, _, device = training.setup_training("cpu", threads=1)
    finally:
        torch.set_num_threads(before)
    assert device.type == "cpu"
    assert joined == ["gloo"]
