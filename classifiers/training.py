"""Training an expression classifier: one readable loop, top to bottom (`train_classifier`).

Data stays in memory as tensors; each step indexes a batch, augments it as a whole on tensors and
takes an optimizer step. Model selection is on val only. Checkpoints (safetensors) are written
every epoch so an interrupted run resumes where it stopped (runtime/resumable.py). Under `torchrun`
the loop runs data-parallel (gloo on CPU, nccl on CUDA), each rank taking its share of every
global batch.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from classifiers.architectures import model_from_config
from classifiers.augment import augment_batch, preprocess, tta_views
from classifiers.batches import BatchMix, SharedSet, batch_targets, check_targets, levers_fingerprint, loss
from classifiers.config import TrainConfig
from classifiers.metrics import confusion_matrices, scores_from_confusion
from runtime import checkpoint as ckpt
from runtime.device import bf16_is_fast, gather_states, setup_training
from runtime.resumable import ResumableRun, progress_bar, run_fingerprint

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


def use_amp(cfg: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast for the training steps."""
    return cfg.amp and bf16_is_fast(device)


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


@dataclass
class _Schedule:
    """An epoch is one pass over the data, or with `steps` one of `epochs` equal rounds of steps."""

    steps_per_epoch: int
    total: int
    warmup: int

    @classmethod
    def of(cls, cfg: TrainConfig, n: int) -> "_Schedule":
        per_epoch = max(1, n // cfg.batch_size) if cfg.steps is None else math.ceil(cfg.steps / cfg.epochs)
        return cls(per_epoch, per_epoch * cfg.epochs, int(cfg.warmup_epochs * per_epoch))


@dataclass
class _State:
    """What a checkpoint holds besides the model and optimizer: where the run is, and the best so far."""

    epoch: int = 0  # the next epoch to run
    step: int = 0
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"epoch": -1, "score": -1.0, "val": {}})
    best_weights: dict | None = None


def _optimizer(cfg: TrainConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.momentum > 0,
                               weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def _epoch_order(cfg: TrainConfig, n: int, epoch: int, sched: _Schedule, sample_p: torch.Tensor | None,
                 gen: torch.Generator) -> torch.Tensor:
    """The global order of this epoch's training faces (the same on every rank)."""
    if sample_p is not None:
        return torch.multinomial(sample_p, sched.steps_per_epoch * cfg.batch_size, replacement=True, generator=gen)
    if cfg.steps is None:
        return torch.randperm(n, generator=gen)
    draws = sched.steps_per_epoch * cfg.batch_size  # rounds of `steps` cut an endless stream of passes
    return stream_of_passes(n, epoch * draws, draws, seed=cfg.seed * 1009 + 7919)


def _set_lr(opt: torch.optim.Optimizer, cfg: TrainConfig, step: int, progress: float, sched: _Schedule,
            plateau) -> None:
    if plateau is None:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * _lr_factor(progress, sched.warmup / sched.total)
    elif step < sched.warmup:
        for g in opt.param_groups:
            g["lr"] = cfg.lr * (step + 1) / sched.warmup


def _validate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig) -> dict:
    probs = predict_proba(model, images, cfg, tta=cfg.val_tta)
    scores = scores_from_confusion(confusion_matrices(labels, probs.argmax(1), NUM_CLASSES))
    return {"accuracy": float(scores["accuracy"]), "macro_f1": float(scores["macro_f1"]),
            "nll": float(F.nll_loss(probs.clamp(min=1e-8).log(), labels))}


def _training_data(cfg: TrainConfig, images: torch.Tensor, labels: torch.Tensor, device: torch.device):
    """(normalised float images, once; class weights of the loss; per-face draw weights or None)."""
    weights = class_weights(labels, cfg.class_weighting)
    sample_p = None
    if cfg.balanced_sampling:
        sample_p = (1.0 / torch.bincount(labels, minlength=NUM_CLASSES).double().clamp(min=1))[labels]
    return preprocess(images, cfg.augment.equalize), weights.to(device) if weights is not None else None, sample_p


class _Batches:
    """This rank's part of every step's batch: the training faces the epoch order names, and with a
    shared set `per_batch` of its faces beside them (from their own endless stream of passes), then
    augmented together, then mixed (mixup / CutMix). Yields (images, labels, targets, weights) on device."""

    def __init__(self, cfg: TrainConfig, x_train: torch.Tensor, labels: torch.Tensor, targets, weights,
                 shared: SharedSet | None, batch_mix: BatchMix | None, rank: int, world: int, device) -> None:
        self.cfg, self.x, self.labels, self.targets, self.weights = cfg, x_train, labels, targets, weights
        self.shared, self.rank, self.world, self.device = shared, rank, world, device
        self.local = cfg.batch_size // world  # each rank's share of every global batch
        self.x_shared = preprocess(shared.images, cfg.augment.equalize) if shared is not None else None
        self.mix = batch_mix.transform() if batch_mix is not None else None
        self.order = self.shared_order = None

    def start_epoch(self, order: torch.Tensor, epoch: int, steps: int) -> None:
        self.order = order
        if self.shared is not None:  # stateless, like the step-budget order: a resumed run continues it
            per = self.shared.per_batch
            self.shared_order = stream_of_passes(len(self.shared.labels), epoch * steps * per, steps * per,
                                                 seed=self.cfg.seed * 1009 + 4243)

    def step(self, s: int, aug_gen: torch.Generator):
        b, r = self.cfg.batch_size, self.rank
        idx = self.order[s * b + r * self.local : s * b + (r + 1) * self.local]
        x, y = self.x[idx], self.labels[idx]
        t = self.targets[idx] if self.targets is not None else None
        w = self.weights[idx] if self.weights is not None else None
        if self.shared is not None:
            x, y, t, w = self._with_shared(s, idx, x, y, t, w)
        x = augment_batch(x, self.cfg.augment, aug_gen)
        if self.mix is not None:  # torchvision's MixUp/CutMix: one-hot targets mixed like the images
            x, t = self.mix(x, y)
        return tuple(v.to(self.device, non_blocking=True) if v is not None else None for v in (x, y, t, w))

    def _with_shared(self, s: int, idx, x, y, t, w):
        sh, per = self.shared, self.shared.per_batch
        lo, hi = per * self.rank // self.world, per * (self.rank + 1) // self.world  # this rank's part
        sidx = self.shared_order[s * per + lo : s * per + hi]
        t_own = batch_targets(y, t)
        t_sh = batch_targets(sh.labels[sidx], sh.targets[sidx] if sh.targets is not None else None)
        w_own = w if w is not None else torch.ones(len(idx))
        w_sh = sh.weights[sidx] if sh.weights is not None else torch.ones(len(sidx))
        return (torch.cat([x, self.x_shared[sidx]]), torch.cat([y, sh.labels[sidx]]), torch.cat([t_own, t_sh]),
                torch.cat([w_own, w_sh]))


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
    targets: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    shared: SharedSet | None = None,
    batch_mix: BatchMix | None = None,
) -> TrainResult:
    """targets / weights / shared / batch_mix: the levers of classifiers/batches.py (all off: the classic loop)."""
    check_targets(train_labels, targets, weights)
    if batch_mix is not None and (targets is not None or shared is not None):
        raise ValueError("mixup / CutMix mix hard labels of one set: not with soft targets or a shared set")
    rank, world, device = setup_training(cfg.device, cfg.threads)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes ({world})")
    torch.manual_seed(cfg.seed)
    amp = use_amp(cfg, device)
    # channels_last everywhere: with bf16 autocast, and in float32 on CPUs without native bf16 too, where a
    # vgg_fer x0.25 float32 step measured 1.16-1.45x (batch 64) and 1.23-1.28x (batch 32) faster in two runs here
    # (benchmarks/bench_memory_format.py, results/memory_format_benchmark.txt)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model = model_from_config(cfg).to(device).to(memory_format=memory_format)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = _optimizer(cfg, model)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.3, patience=2) if cfg.schedule == "plateau" else None
    n = len(train_labels)
    sched = _Schedule.of(cfg, n)
    x_train, class_w, sample_p = _training_data(cfg, train_images, train_labels, device)
    gen = torch.Generator().manual_seed(cfg.seed * 1009 + 17)  # same order on every rank
    aug_gen = torch.Generator().manual_seed(cfg.seed * 1009 + 101 + rank)

    batches = _Batches(cfg, x_train, train_labels, targets, weights, shared, batch_mix, rank, world, device)
    fingerprint = run_fingerprint(cfg, train_images, train_labels, world,
                                  **levers_fingerprint(targets, weights, shared, batch_mix))
    run = ResumableRun("classifier training", checkpoint_dir, fingerprint, max_minutes=cfg.max_minutes, rank=rank,
                       world=world, log=log)
    state = _State()
    restored = run.restore(complete=lambda tensors: all(f"rng.aug{r}" in tensors for r in range(world)))
    if restored is not None:
        state = _restore(*restored, model, opt, plateau, gen, aug_gen, rank)
        run.resumed(f"epoch {state.epoch + 1}/{cfg.epochs}", log_step=state.epoch)  # rows are logged at step = epoch

    run.begin()
    stopped = "completed"
    with progress_bar(progress and rank == 0) as bar:
        task = bar.add_task(f"{cfg.arch} epoch {state.epoch + 1}/{cfg.epochs}", total=sched.total, completed=state.step)
        for epoch in range(state.epoch, cfg.epochs):
            if run.budget_used() >= 1:  # resumed after the budget ran out
                stopped = f"time budget of {cfg.max_minutes} min reached"
                break
            t0 = time.perf_counter()
            net.train()
            batches.start_epoch(_epoch_order(cfg, n, epoch, sched, sample_p, gen), epoch, sched.steps_per_epoch)
            loss_sum = torch.zeros((), device=device)
            budget_hit, steps_done = False, 0
            for s in range(sched.steps_per_epoch):
                xb, yb, tb, wb = batches.step(s, aug_gen)
                xb = xb.contiguous(memory_format=memory_format)
                progress_frac = state.step / sched.total
                if cfg.max_minutes is not None:  # a time budget compresses the schedule so it still anneals
                    used = run.budget_used()
                    if used >= 1:
                        budget_hit = True
                        break
                    progress_frac = max(progress_frac, used)
                _set_lr(opt, cfg, state.step, progress_frac, sched, plateau)
                loss_sum += _optimizer_step(net, opt, xb, yb, tb, wb, class_w, cfg, amp)
                state.step, steps_done = state.step + 1, steps_done + 1
                bar.update(task, advance=1)
            row = _end_of_epoch(model, cfg, state, epoch, float(loss_sum) / max(1, steps_done), val_images, val_labels,
                                opt, plateau, sched, world, t0, run)
            bar.update(task, description=f"{cfg.arch} epoch {epoch + 1}/{cfg.epochs} val acc {row['val_accuracy']:.3f} "
                                         f"(best {state.best['val']['accuracy']:.3f})")
            if log is not None and rank == 0:
                log(row, epoch + 1)
            aug_states = gather_states(aug_gen.get_state(), world, device) if run.path is not None else []
            run.save(*_checkpoint(model, opt, plateau, gen, aug_states, state, epoch))
            if budget_hit:
                stopped = f"time budget of {cfg.max_minutes} min reached in epoch {epoch + 1}"
                break
    if world > 1:
        dist.barrier()
    final = copy.deepcopy(model).cpu()
    if state.best_weights is not None:
        final.load_state_dict(state.best_weights)
    return TrainResult(final.eval(), state.history, state.best["epoch"], state.best["val"], run.elapsed(), stopped, state.step)


def _optimizer_step(net, opt, xb: torch.Tensor, yb: torch.Tensor, tb, wb, class_w, cfg: TrainConfig,
                    amp: bool) -> torch.Tensor:
    with torch.autocast(xb.device.type, dtype=torch.bfloat16, enabled=amp):
        logits = net(xb)
    batch_loss = loss(logits.float(), yb, tb, wb, class_w, cfg.label_smoothing)
    opt.zero_grad(set_to_none=True)
    batch_loss.backward()
    opt.step()
    return batch_loss.detach()


def _end_of_epoch(model, cfg: TrainConfig, state: _State, epoch: int, train_loss: float, val_images, val_labels,
                  opt, plateau, sched: _Schedule, world: int, t0: float, run: ResumableRun) -> dict:
    """Validate, keep the best weights by cfg.select_by on val, and return the epoch's log row."""
    if not math.isfinite(train_loss):
        raise FloatingPointError(f"training diverged at epoch {epoch + 1} (loss {train_loss}); lower lr")
    if world > 1:  # DDP copies rank 0's BatchNorm statistics only at the next forward: copy them now, so
        for buffer in model.buffers():  # every rank selects on val (and ends) with rank 0's model
            dist.broadcast(buffer, 0)
    val = _validate(model, val_images, val_labels, cfg)
    if plateau is not None and state.step >= sched.warmup:
        plateau.step(val[cfg.select_by])
    row = {"epoch": epoch + 1, "train_loss": round(train_loss, 5), "lr": opt.param_groups[0]["lr"],
           **{f"val_{k}": round(v, 5) for k, v in val.items()}, "epoch_seconds": round(time.perf_counter() - t0, 2),
           "elapsed_minutes": round(run.elapsed() / 60, 3)}
    state.history.append(row)
    if val[cfg.select_by] > state.best["score"]:
        state.best = {"epoch": epoch + 1, "score": val[cfg.select_by], "val": val}
        state.best_weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return row


def _checkpoint(model, opt, plateau, gen: torch.Generator, aug_states: list[torch.Tensor], state: _State,
                epoch: int) -> tuple[dict, dict]:
    """rng.torch (dropout) and rng.order are the same on every rank; the augmentation stream differs per rank."""
    opt_tensors, opt_meta = ckpt.optimizer_state(opt)
    tensors = {**ckpt.prefixed("model", model.state_dict()), **ckpt.prefixed("best", state.best_weights or {}),
               **ckpt.prefixed("optim", opt_tensors), "rng.order": gen.get_state(),
               **{f"rng.aug{r}": s for r, s in enumerate(aug_states)}, "rng.torch": torch.get_rng_state()}
    meta = {"epoch": epoch, "step": state.step, "history": state.history, "best": state.best, "optim": opt_meta,
            "plateau": plateau.state_dict() if plateau is not None else None}
    return tensors, meta


def _restore(tensors: dict, meta: dict, model, opt, plateau, gen: torch.Generator, aug_gen: torch.Generator,
             rank: int) -> _State:
    model.load_state_dict(ckpt.unprefixed("model", tensors))
    ckpt.load_optimizer_state(opt, ckpt.unprefixed("optim", tensors), meta["optim"])
    gen.set_state(tensors["rng.order"])
    torch.set_rng_state(tensors["rng.torch"])  # dropout draws from the global generator
    aug_gen.set_state(tensors[f"rng.aug{rank}"])  # each rank continues its own augmentation stream
    if plateau is not None:
        plateau.load_state_dict(meta["plateau"])
    return _State(meta["epoch"] + 1, meta["step"], meta["history"], meta["best"], ckpt.unprefixed("best", tensors) or None)
