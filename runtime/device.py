"""Where a run computes: the device, bf16, the CPU threads, and the torchrun process group (gloo on
CPU, nccl on CUDA). The ground floor: it imports nothing of the project."""

from __future__ import annotations

import os
import platform

import torch
import torch.distributed as dist


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: cuda requested but no CUDA device is available; set device: auto or cpu")
    return torch.device(name)


def bf16_is_fast(device: torch.device) -> bool:
    """bf16 pays off on CUDA, and on CPUs with native bf16 (AVX512-BF16/AMX), where it measured ~2x
    faster training steps than float32 for vgg_fer on 2 cores (benchmarks/bench_classifier_input.py)."""
    return device.type == "cuda" or bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def is_main_process() -> bool:
    """False on every rank but 0 of a torchrun job: only rank 0 writes outputs."""
    return int(os.environ.get("RANK", "0")) == 0


def setup_training(device_name: str, threads: int | None) -> tuple[int, int, torch.device]:
    """(rank, world, device) for this process: joins the torchrun group if there is one, picks the
    rank's GPU, and splits the CPU threads between the ranks on CPU."""
    device = resolve_device(device_name)
    rank, world = _distributed(device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if device.type == "cpu":
        torch.set_num_threads(threads or max(1, (os.cpu_count() or 1) // world))
    return rank, world, device


def process_group_backend(device: torch.device) -> str:
    """The torch.distributed backend for a run on `device`: nccl moves only CUDA tensors, so a run
    on CPU needs gloo even on a machine that has a GPU (device: cpu there)."""
    return "nccl" if device.type == "cuda" else "gloo"


def _distributed(device: torch.device) -> tuple[int, int]:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group(backend=process_group_backend(device))
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_states(state: torch.Tensor, world: int, device: torch.device) -> list[torch.Tensor]:
    """Every rank's generator state (a uint8 tensor), in rank order, on every rank: a collective, so
    every rank calls it. Sent from `device` because nccl only moves CUDA tensors."""
    if world == 1:
        return [state]
    local = state.to(device)
    states = [torch.empty_like(local) for _ in range(world)]
    dist.all_gather(states, local)
    return [s.cpu() for s in states]


def hardware() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info
