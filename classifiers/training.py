"""Training an expression classifier: one readable loop, top to bottom.

Data stays in memory as tensors; each step indexes a batch, augments it as a whole on tensors and
takes an optimizer step. Model selection is on val only. Checkpoints (safetensors) are written
every epoch so an interrupted run resumes where it stopped. Under `torchrun` the loop runs
data-parallel (gloo on CPU, nccl on CUDA), each rank taking its share of every global batch.
"""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from classifiers import checkpoint as ckpt
from classifiers.architectures import build_model
from classifiers.augment import augment_batch, preprocess, tta_views
from classifiers.config import TrainConfig
from classifiers.metrics import confusion_matrices, scores_from_confusion

NUM_CLASSES = 7


@dataclass
class TrainResult:
    model: torch.nn.Module  # best weights (by cfg.select_by on val), eval mode, on CPU
    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val: dict = field(default_factory=dict)
    train_seconds: float = 0.0
    stopped: str = "completed"
    steps: int = 0  # optimisation steps taken


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


def use_amp(cfg: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast for the training steps."""
    return cfg.amp and bf16_is_fast(device)


def model_from_config(cfg: TrainConfig) -> torch.nn.Module:
    return build_model(cfg.arch, attention=cfg.attention, width=cfg.width, dropout=cfg.dropout, pretrained=cfg.pretrained)


@torch.no_grad()
def predict_proba(model: torch.nn.Module, images_uint8: torch.Tensor, cfg: TrainConfig, tta: str | None = None,
                  batch_size: int = 512) -> torch.Tensor:
    """Class probabilities for uint8 images (N x 1 x 48 x 48), averaged over test-time views."""
    model.eval()
    device = next(model.parameters()).device
    fast = cfg.eval_amp and bf16_is_fast(device)
    out = []
    for i in range(0, len(images_uint8), batch_size):
        x = preprocess(images_uint8[i : i + batch_size], cfg.augment.equalize).to(device)
        views = tta_views(x, tta or cfg.tta)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=fast):
            probs = sum(torch.softmax(model(v).float(), dim=1) for v in views) / len(views)
        out.append(probs.cpu())
    return torch.cat(out) if out else torch.zeros(0, NUM_CLASSES)


def class_weights(labels: torch.Tensor, mode: str) -> torch.Tensor | None:
    if mode == "none":
        return None
    counts = torch.bincount(labels, minlength=NUM_CLASSES).double().clamp(min=1)
    w = counts.sum() / (NUM_CLASSES * counts)
    w = w if mode == "inverse" else w.sqrt()
    return (w / (w * counts).sum() * counts.sum()).float()  # mean weight over samples = 1


def stream_of_passes(n: int, start: int, count: int, seed: int) -> torch.Tensor:
    """Items start .. start+count-1 of an endless stream of shuffled passes over range(n), pass p
    shuffled by seed + p: stateless, so a resumed run continues the same stream."""
    first, last = start // n, (start + count - 1) // n
    stream = torch.cat([torch.randperm(n, generator=torch.Generator().manual_seed(seed + p))
                        for p in range(first, last + 1)])
    return stream[start - first * n : start - first * n + count]


def _lr_factor(progress: float, warmup: float) -> float:
    """Linear warm-up then cosine decay to 0, as a function of the fraction of training done."""
    if progress < warmup:
        return max(progress / warmup, 1e-3)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (progress - warmup) / max(1e-9, 1 - warmup))))


def resume_log(log: Callable[[dict, int], None] | None, step: int) -> None:
    """Tell a logger that keeps its curves across runs (pipelines.live.LiveLog) that this run resumed
    from a checkpoint taken at `step`, so it keeps the rows up to there and drops any after."""
    if log is not None and hasattr(log, "resume"):
        log.resume(step)


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


def train_classifier(
    train_images: torch.Tensor,
    train_labels: torch.Tensor,
    val_images: torch.Tensor,
    val_labels: torch.Tensor,
    cfg: TrainConfig,
    *,
    checkpoint_dir: Path | None = None,
    log: Callable[[dict, int], None] | None = None,
    progress: bool = True,
) -> TrainResult:
    rank, world, device = setup_training(cfg.device, cfg.threads)
    torch.manual_seed(cfg.seed)
    model = model_from_config(cfg).to(device)
    amp = use_amp(cfg, device)
    memory_format = torch.channels_last if (cfg.channels_last and (device.type == "cuda" or amp)) else torch.contiguous_format
    model = model.to(memory_format=memory_format)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                              weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes ({world})")
    local_batch = cfg.batch_size // world
    n = len(train_labels)
    # an epoch is one pass over the data, or with `steps` one of `epochs` equal rounds of steps
    steps_per_epoch = max(1, n // cfg.batch_size) if cfg.steps is None else math.ceil(cfg.steps / cfg.epochs)
    total_steps = steps_per_epoch * cfg.epochs
    warmup = int(cfg.warmup_epochs * steps_per_epoch)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.3, patience=2) if cfg.schedule == "plateau" else None

    weights = class_weights(train_labels, cfg.class_weighting)
    weights = weights.to(device) if weights is not None else None
    sample_p = None
    if cfg.balanced_sampling:
        counts = torch.bincount(train_labels, minlength=NUM_CLASSES).double()
        sample_p = (1.0 / counts.clamp(min=1))[train_labels]
    x_train = preprocess(train_images, cfg.augment.equalize)  # float, normalised, once
    gen = torch.Generator().manual_seed(cfg.seed * 1009 + 17)  # same order on every rank
    aug_gen = torch.Generator().manual_seed(cfg.seed * 1009 + 101 + rank)

    start_epoch, step, elapsed = 0, 0, 0.0
    history: list[dict] = []
    best = {"epoch": -1, "score": -1.0, "val": {}}
    best_state = None
    fingerprint = {"config": cfg.to_dict(), "n_train": n, "world": world,
                   "train_sha256": ckpt.data_digest(train_images, train_labels)}
    last_path = checkpoint_dir / "last.safetensors" if checkpoint_dir else None
    if last_path and last_path.exists():
        tensors, meta = ckpt.load_checkpoint(last_path)
        if meta.get("fingerprint") == fingerprint and all(f"rng.aug{r}" in tensors for r in range(world)):
            model.load_state_dict(ckpt.unprefixed("model", tensors))
            best_state = ckpt.unprefixed("best", tensors) or None
            ckpt.load_optimizer_state(opt, ckpt.unprefixed("optim", tensors), meta["optim"])
            gen.set_state(tensors["rng.order"])
            torch.set_rng_state(tensors["rng.torch"])  # dropout draws from the global generator
            aug_gen.set_state(tensors[f"rng.aug{rank}"])  # each rank continues its own augmentation stream
            if plateau is not None:
                plateau.load_state_dict(meta["plateau"])
            start_epoch, step, elapsed = meta["epoch"] + 1, meta["step"], meta["elapsed"]
            history, best = meta["history"], meta["best"]
            if rank == 0:
                print(f"resuming from {last_path} at epoch {start_epoch + 1}/{cfg.epochs}", flush=True)
                resume_log(log, start_epoch)  # rows are logged at step = epoch number
        elif rank == 0:
            print(f"{last_path} was made with other settings or data; starting afresh", flush=True)

    stopped = "completed"
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                   TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress or rank != 0, transient=False)
    with bar:
        task = bar.add_task(f"{cfg.arch} epoch {start_epoch + 1}/{cfg.epochs}", total=total_steps, completed=step)
        for epoch in range(start_epoch, cfg.epochs):
            if cfg.max_minutes is not None and elapsed >= 60 * cfg.max_minutes:  # resumed after the budget ran out
                stopped = f"time budget of {cfg.max_minutes} min reached"
                break
            t0 = time.perf_counter()
            net.train()
            if sample_p is not None:
                order = torch.multinomial(sample_p, steps_per_epoch * cfg.batch_size, replacement=True, generator=gen)
            elif cfg.steps is None:
                order = torch.randperm(n, generator=gen)
            else:  # rounds of `steps` cut an endless stream of passes: every face once per pass
                draws = steps_per_epoch * cfg.batch_size
                order = stream_of_passes(n, epoch * draws, draws, seed=cfg.seed * 1009 + 7919)
            loss_sum = torch.zeros((), device=device)
            budget_hit, steps_done = False, 0
            for s in range(steps_per_epoch):
                idx = order[s * cfg.batch_size + rank * local_batch : s * cfg.batch_size + (rank + 1) * local_batch]
                xb = augment_batch(x_train[idx], cfg.augment, aug_gen)
                xb = xb.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                yb = train_labels[idx].to(device, non_blocking=True)
                progress_frac = step / total_steps
                if cfg.max_minutes is not None:  # a time budget compresses the schedule so it still anneals
                    used = (elapsed + time.perf_counter() - t0) / (60 * cfg.max_minutes)
                    if world > 1:  # all ranks must stop at the same step
                        used_t = torch.tensor([used], dtype=torch.float64)
                        dist.all_reduce(used_t, op=dist.ReduceOp.MAX)
                        used = float(used_t)
                    if used >= 1:
                        budget_hit = True
                        break
                    progress_frac = max(progress_frac, used)
                if plateau is None:
                    for g in opt.param_groups:
                        g["lr"] = cfg.lr * _lr_factor(progress_frac, warmup / total_steps)
                elif step < warmup:
                    for g in opt.param_groups:
                        g["lr"] = cfg.lr * (step + 1) / warmup
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                    loss = F.cross_entropy(net(xb), yb, weight=weights, label_smoothing=cfg.label_smoothing)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
                step += 1
                steps_done += 1
                bar.update(task, advance=1)
            train_loss = float(loss_sum) / max(1, steps_done)
            if not math.isfinite(train_loss):
                raise FloatingPointError(f"training diverged at epoch {epoch + 1} (loss {train_loss}); lower lr")
            if world > 1:  # DDP copies rank 0's BatchNorm statistics only at the next forward: copy them now, so
                for buffer in model.buffers():  # every rank selects on val (and ends) with rank 0's model
                    dist.broadcast(buffer, 0)

            probs = predict_proba(model, val_images, cfg, tta=cfg.val_tta)
            pred = probs.argmax(1)
            scores = scores_from_confusion(confusion_matrices(val_labels, pred, NUM_CLASSES))
            val = {"accuracy": float(scores["accuracy"]), "macro_f1": float(scores["macro_f1"]),
                   "nll": float(F.nll_loss(probs.clamp(min=1e-8).log(), val_labels))}
            if plateau is not None and step >= warmup:
                plateau.step(val[cfg.select_by])
            epoch_s = time.perf_counter() - t0
            elapsed += epoch_s
            row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "lr": opt.param_groups[0]["lr"],
                   **{f"val_{k}": round(v, 5) for k, v in val.items()}, "epoch_seconds": round(epoch_s, 2),
                   "elapsed_minutes": round(elapsed / 60, 3)}
            history.append(row)
            if val[cfg.select_by] > best["score"]:
                best = {"epoch": epoch + 1, "score": val[cfg.select_by], "val": val}
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            bar.update(task, description=f"{cfg.arch} epoch {epoch + 1}/{cfg.epochs} val acc {val['accuracy']:.3f} "
                                         f"(best {best['val']['accuracy']:.3f})")
            if log is not None and rank == 0:
                log(row, epoch + 1)
            aug_states = gather_states(aug_gen.get_state(), world, device) if last_path is not None else []
            if last_path is not None and rank == 0:
                opt_tensors, opt_meta = ckpt.optimizer_state(opt)
                # rng.torch (dropout) and rng.order are the same on every rank; augmentation differs per rank
                tensors = {**ckpt.prefixed("model", model.state_dict()), **ckpt.prefixed("best", best_state or {}),
                           **ckpt.prefixed("optim", opt_tensors), "rng.order": gen.get_state(),
                           **{f"rng.aug{r}": state for r, state in enumerate(aug_states)},
                           "rng.torch": torch.get_rng_state()}
                meta = {"fingerprint": fingerprint, "epoch": epoch, "step": step, "elapsed": elapsed,
                        "history": history, "best": best, "optim": opt_meta,
                        "plateau": plateau.state_dict() if plateau is not None else None}
                ckpt.save_checkpoint(last_path, tensors, meta)
            if budget_hit:
                stopped = f"time budget of {cfg.max_minutes} min reached in epoch {epoch + 1}"
                break
    if world > 1:
        dist.barrier()
    final = copy.deepcopy(model).cpu()
    if best_state is not None:
        final.load_state_dict(best_state)
    final.eval()
    return TrainResult(final, history, best["epoch"], best["val"], elapsed, stopped, step)
