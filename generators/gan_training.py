"""Training a class-conditional GAN: one readable loop, top to bottom.

Each step: draw a class-balanced real batch and as many fakes with the same labels; D step on
DiffAugment(real) vs DiffAugment(fake) with the hinge loss (plus lazy R1 when r1_gamma > 0); G step
through the just-updated D on the same fakes (plus, if judge_guidance > 0, the judge's cross-entropy
for the conditioning label); EMA update of G. Every random draw of step s comes from generators
seeded by (seed, s, rank), so a resumed run draws exactly what an uninterrupted one would, and the
checkpoint (G, D, EMA, both Adams, step, global RNG state) is all there is to resume.

Data-parallel under torchrun: every rank takes its slice of each global batch and gradients are
averaged with one all-reduce per network. Not DistributedDataParallel, because the R1 penalty
needs a double backward and the G step backpropagates through D without updating it, neither of
which DDP's reducer supports.
"""

from __future__ import annotations

import copy
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from generators.config import GanConfig
from generators.diffaugment import diff_augment, parse_policy
from generators.gan_networks import Generator, build_discriminator, build_generator, judge_logits
from generators.gan_sampling import SAMPLING_FORMAT, sample, standing_statistics
from generators.sampling import to_generator_range
from quality.probe import QualityProbe
from runtime import checkpoint as ckpt
from runtime.device import setup_training
from runtime.labels import EXPRESSIONS
from runtime.resumable import ResumableRun, progress_bar, run_fingerprint

NUM_CLASSES = len(EXPRESSIONS)
GRID_COLUMNS = 8
GRID_SEED = 2 * 10**12

class GanDivergedError(FloatingPointError):
    """A loss or weight became NaN/inf; the last good checkpoint is left as it was."""


@dataclass
class GanResult:
    generator: Generator  # EMA weights, standing BN statistics, eval mode, on CPU
    steps: int
    seconds: float
    stopped: str = "completed"
    quality: dict = field(default_factory=dict)  # last reading: step, gan_test {overall, per_class}, kid
    history: list[dict] = field(default_factory=list)  # every quality reading


def _step_generator(seed: int, step: int, stream: int) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 64 + stream)


def _tensor_digest(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(tensors[k].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def _average_gradients(params: list[torch.nn.Parameter], world: int) -> None:
    grads = [p.grad for p in params if p.grad is not None]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def mode_seeking_loss(a: torch.Tensor, b: torch.Tensor, za: torch.Tensor, zb: torch.Tensor) -> torch.Tensor:
    """MSGAN's regulariser (Mao et al. 2019): the inverse of how far two images of the same label move
    per unit of noise distance; small when G maps different z to different faces. Mean absolute
    differences, as in the paper's code; the 1e-5 keeps it finite for identical images."""
    ratio = (a - b).abs().mean() / (za - zb).abs().mean()
    return 1.0 / (ratio + 1e-5)


def _all_finite(*modules: torch.nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for m in modules for p in m.parameters())


def _ema_snapshot(g_ema: Generator, seed: int) -> Generator:
    """A CPU copy of the EMA generator with its own batch-norm statistics, for sampling."""
    snap = copy.deepcopy(g_ema).float().to("cpu", memory_format=SAMPLING_FORMAT)
    standing_statistics(snap, seed=seed)
    return snap


def grid_images(snapshot: Generator, seed: int = 0) -> torch.Tensor:
    """The fixed sample grid as uint8 (7 * 8, 1, 48, 48), row-major: row r (8 images) is expression r,
    column j has the same z in every row, so rows differ only by the label."""
    labels = torch.arange(NUM_CLASSES).repeat_interleave(GRID_COLUMNS)
    seeds = (GRID_SEED + seed * 1000 + torch.arange(GRID_COLUMNS)).repeat(NUM_CLASSES)
    return sample(snapshot, labels, seeds)


@dataclass
class _Nets:
    """What a GAN checkpoint holds besides the step: both networks, the EMA generator, both Adams."""

    G: Generator
    D: torch.nn.Module
    G_ema: Generator
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    judge_model: torch.nn.Module | None

    @classmethod
    def build(cls, cfg: GanConfig, judge, device: torch.device, memory_format) -> "_Nets":
        judge_model = copy.deepcopy(judge.model).to(device, memory_format=memory_format).eval() if judge else None
        if judge_model is not None:
            judge_model.requires_grad_(False)
        G = build_generator(cfg).to(device, memory_format=memory_format)
        D = build_discriminator(cfg, judge_model).to(device, memory_format=memory_format)
        G_ema = copy.deepcopy(G).eval().requires_grad_(False)
        opt_g = torch.optim.Adam(list(G.parameters()), lr=cfg.g_lr, betas=cfg.betas)
        opt_d = torch.optim.Adam([p for p in D.parameters() if p.requires_grad], lr=cfg.d_lr, betas=cfg.betas)
        return cls(G, D, G_ema, opt_g, opt_d, judge_model)

    @property
    def g_params(self) -> list[torch.nn.Parameter]:
        return list(self.G.parameters())

    @property
    def d_params(self) -> list[torch.nn.Parameter]:
        return [p for p in self.D.parameters() if p.requires_grad]

    def checkpoint(self, step: int, history: list[dict]) -> tuple[dict, dict]:
        og, og_meta = ckpt.optimizer_state(self.opt_g)
        od, od_meta = ckpt.optimizer_state(self.opt_d)
        tensors = {**ckpt.prefixed("G", self.G.state_dict()), **ckpt.prefixed("D", self.D.state_dict()),
                   **ckpt.prefixed("G_ema", self.G_ema.state_dict()), **ckpt.prefixed("opt_g", og),
                   **ckpt.prefixed("opt_d", od), "rng.torch": torch.get_rng_state()}
        return tensors, {"kind": "gan-training", "step": step, "history": history, "opt_g": og_meta, "opt_d": od_meta}

    def restore(self, tensors: dict, meta: dict) -> tuple[int, list[dict]]:
        self.G.load_state_dict(ckpt.unprefixed("G", tensors))
        self.D.load_state_dict(ckpt.unprefixed("D", tensors))
        self.G_ema.load_state_dict(ckpt.unprefixed("G_ema", tensors))
        ckpt.load_optimizer_state(self.opt_g, ckpt.unprefixed("opt_g", tensors), meta["opt_g"])
        ckpt.load_optimizer_state(self.opt_d, ckpt.unprefixed("opt_d", tensors), meta["opt_d"])
        torch.set_rng_state(tensors["rng.torch"])
        return meta["step"], meta["history"]

    def finite(self) -> bool:
        return _all_finite(self.G, self.D, self.G_ema)

    def broadcast_from_rank0(self) -> None:
        for t in [*self.G.state_dict().values(), *self.D.state_dict().values(), *self.G_ema.state_dict().values()]:
            dist.broadcast(t, 0)


def _d_step(nets: _Nets, cfg: GanConfig, real, fake, y, y_fake, policy, g_aug, amp, step: int, world: int):
    """Hinge loss on augmented reals and fakes (one pass over both), plus lazy R1; returns (loss, D(real), D(fake))."""
    local = len(real)
    with amp:
        both = diff_augment(torch.cat([real, fake.detach()]), policy, g_aug)
        out = nets.D(both, torch.cat([y, y_fake])).float()
        d_real, d_fake = out[:local], out[local:]
        loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    nets.opt_d.zero_grad(set_to_none=True)
    loss_d.backward()
    if cfg.r1_gamma > 0 and step % cfg.r1_every == 0:
        x = diff_augment(real, policy, g_aug).detach().requires_grad_(True)
        with amp:
            score = nets.D(x, y).float().sum()
        (grad,) = torch.autograd.grad(score, x, create_graph=True)
        r1 = grad.float().square().sum(dim=(1, 2, 3)).mean() * (cfg.r1_gamma / 2 * cfg.r1_every)
        r1.backward()
    if world > 1:
        _average_gradients(nets.d_params, world)
    nets.opt_d.step()
    return loss_d, d_real, d_fake


def _g_gradients(nets: _Nets, cfg: GanConfig, fake, z, y_fake, policy, g_aug, amp, pairs: int, world: int):
    """G's gradients through the just-updated D (whose weights get none), plus judge guidance and mode
    seeking; returns (adversarial, judge cross-entropy, mode-seeking) losses. The caller steps."""
    zero = torch.zeros((), device=fake.device)
    with amp:
        fake_aug = diff_augment(fake, policy, g_aug)
        logits = None
        if cfg.judge_guidance > 0 and cfg.d_kind == "projected" and cfg.judge_penultimate:
            out_g, logits = nets.D.forward_with_logits(fake_aug, y_fake)
        else:
            out_g = nets.D(fake_aug, y_fake)
        if cfg.judge_guidance > 0 and logits is None:
            logits = judge_logits(nets.judge_model, fake_aug)
        loss_adv = -out_g.float().mean()
        loss_cls = F.cross_entropy(logits.float(), y_fake) if logits is not None else zero
        loss_g = loss_adv + cfg.judge_guidance * loss_cls
        loss_ms = zero
        if pairs:
            loss_ms = mode_seeking_loss(fake[:pairs].float(), fake[pairs:2 * pairs].float(), z[:pairs], z[pairs:2 * pairs])
            loss_g = loss_g + cfg.mode_seeking * loss_ms
    g_params = nets.g_params
    nets.opt_g.zero_grad(set_to_none=True)
    loss_g.backward(inputs=g_params)
    if world > 1:
        _average_gradients(g_params, world)
    return loss_adv, loss_cls, loss_ms


def _ema_update(nets: _Nets, cfg: GanConfig, step: int) -> None:
    with torch.no_grad():
        decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # short memory early, when G changes fast
        torch._foreach_lerp_(list(nets.G_ema.parameters()), nets.g_params, 1 - decay)
        for b_ema, b in zip(nets.G_ema.buffers(), nets.G.buffers()):
            b_ema.copy_(b)


class _LossMeter:
    """Mean losses and steps/s since the last log row."""

    def __init__(self, cfg: GanConfig, step: int) -> None:
        self.cfg, self.sums = cfg, torch.zeros(6, dtype=torch.float64)  # loss_d, loss_g, loss_cls, d_real, d_fake, loss_ms
        self.t, self.step = time.perf_counter(), step

    def add(self, stats: torch.Tensor) -> None:
        self.sums += stats

    def row(self, step: int) -> dict:
        now, steps = time.perf_counter(), step - self.step
        mean = (self.sums / max(1, steps)).tolist()
        row = {"loss_d": mean[0], "loss_g": mean[1], "d_real": mean[3], "d_fake": mean[4],
               "steps_per_s": steps / max(1e-9, now - self.t)}
        if self.cfg.judge_guidance > 0:
            row["loss_cls"] = mean[2]
        if self.cfg.mode_seeking > 0:
            row["loss_ms"] = mean[5]
        self.sums.zero_()
        self.t, self.step = now, step
        return row


class _Readings:
    """Sample grids and quality readings of EMA snapshots (rank 0 only); `history` holds every reading."""

    def __init__(self, cfg: GanConfig, judge, images_uint8, labels, rank: int, log, on_samples) -> None:
        self.cfg, self.log, self.on_samples, self.rank = cfg, log, on_samples, rank
        self.probe = QualityProbe(judge, images_uint8, labels, cfg.quality_samples, cfg.seed) if (judge is not None and rank == 0) else None
        self.history: list[dict] = []
        self.grid_step = -1

    def quality(self, snapshot: Generator, step: int) -> None:
        if self.probe is None:
            return
        q = {"step": step, **self.probe(lambda y, seeds: sample(snapshot, y, seeds))}
        self.history.append(q)
        if self.log is not None:
            self.log({"gan_test": q["gan_test"]["overall"], "kid": q["kid"],
                      **{f"gan_test_{k}": v for k, v in q["gan_test"]["per_class"].items()}}, step)

    def during(self, G_ema: Generator, step: int) -> None:
        do_samples, do_quality = step % self.cfg.sample_every == 0, step % self.cfg.quality_every == 0
        if self.rank != 0 or not (do_samples or do_quality):
            return
        snap = _ema_snapshot(G_ema, self.cfg.seed)
        if do_samples and self.on_samples is not None:
            self.on_samples(grid_images(snap, self.cfg.seed), step)
            self.grid_step = step
        if do_quality:
            self.quality(snap, step)

    def at_end(self, snap: Generator, step: int) -> None:
        if self.rank != 0:
            return
        if self.on_samples is not None and self.grid_step != step:
            self.on_samples(grid_images(snap, self.cfg.seed), step)
        if self.probe is not None and (not self.history or self.history[-1]["step"] != step):
            self.quality(snap, step)


@dataclass
class _Batch:
    real: torch.Tensor  # this rank's slice of the global batch, in the generator's range
    y: torch.Tensor
    z: torch.Tensor
    y_fake: torch.Tensor  # the fakes' labels: with mode seeking, fake i and i + pairs share one
    pairs: int
    g_aug: torch.Generator  # this rank's augmentation draws of the step


@dataclass
class _Data:
    images: torch.Tensor  # uint8, on the device
    labels: torch.Tensor
    draw_p: torch.Tensor  # per-face draw weights: every class equally often

    def batch(self, cfg: GanConfig, step: int, rank: int, world: int, memory_format) -> _Batch:
        """Step `step`'s batch: every draw from generators seeded by (seed, step, stream), so a resumed
        run draws exactly what an uninterrupted one would; the global batch is the same on every rank."""
        local = cfg.batch_size // world
        mine = slice(rank * local, (rank + 1) * local)
        g_draw = _step_generator(cfg.seed, step, 0)
        g_aug = _step_generator(cfg.seed, step, 1 + rank)
        device = self.images.device
        idx = torch.multinomial(self.draw_p, cfg.batch_size, replacement=True, generator=g_draw)[mine].to(device)
        z = torch.randn(cfg.batch_size, cfg.z_dim, generator=g_draw)[mine].to(device)
        real = to_generator_range(self.images[idx]).contiguous(memory_format=memory_format)
        y = self.labels[idx]
        pairs = local // 2 if cfg.mode_seeking > 0 else 0
        y_fake = torch.cat([y[:pairs], y[:pairs], y[2 * pairs:]]) if pairs else y
        return _Batch(real, y, z, y_fake, pairs, g_aug)


def _train_step(nets: _Nets, cfg: GanConfig, b: _Batch, policy, amp, step: int, world: int) -> torch.Tensor:
    """G draws the fakes, D steps on them, G's gradients are taken through the new D; returns the
    step's readings (loss_d, loss_g, loss_cls, D(real), D(fake), loss_ms) for the caller to check
    before it steps G."""
    with amp:
        fake = nets.G(b.z, b.y_fake)
    loss_d, d_real, d_fake = _d_step(nets, cfg, b.real, fake, b.y, b.y_fake, policy, b.g_aug, amp, step, world)
    loss_adv, loss_cls, loss_ms = _g_gradients(nets, cfg, fake, b.z, b.y_fake, policy, b.g_aug, amp, b.pairs, world)
    return torch.stack([loss_d.detach(), loss_adv.detach(), loss_cls.detach(), d_real.detach().mean(),
                        d_fake.detach().mean(), loss_ms.detach()]).double().cpu()


def train_gan(
    images_uint8: torch.Tensor,
    labels: torch.Tensor,
    cfg: GanConfig,
    *,
    judge=None,
    checkpoint_dir: Path | None = None,
    log: Callable[[dict, int], None] | None = None,
    on_samples: Callable[[torch.Tensor, int], None] | None = None,
    progress: bool = True,
) -> GanResult:
    """Train (or resume) a conditional GAN on uint8 N x 1 x 48 x 48 images with int64 labels.

    `judge` (a `classifiers.judge.Judge`) supplies the projected D's features, the optional guidance
    term and the quality readings; it is needed for d_kind "projected" and for judge_guidance > 0.
    """
    rank, world, device = setup_training(cfg.device, cfg.threads)
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be divisible by the number of processes ({world})")
    if judge is None and (cfg.d_kind == "projected" or cfg.judge_guidance > 0):
        raise ValueError("a judge is needed for d_kind 'projected' and for judge_guidance > 0")
    # channels_last on CPU too: nearest upsampling of an NCHW tensor is ~7x slower there, and the
    # whole step measured 1.3x faster (benchmarks/bench_gan_step.py)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.amp)
    torch.manual_seed(cfg.seed)
    nets = _Nets.build(cfg, judge, device, memory_format)
    data = _Data(images_uint8.to(device), labels.to(device),
                 (1.0 / torch.bincount(labels, minlength=NUM_CLASSES).double().clamp(min=1))[labels])  # class-balanced
    policy = parse_policy(cfg.diffaug)

    judge_digest = _tensor_digest(judge.model.state_dict()) if judge is not None else None
    run = ResumableRun("GAN training", checkpoint_dir, run_fingerprint(cfg, images_uint8, labels, world, judge=judge_digest),
                       max_minutes=cfg.max_minutes, rank=rank, world=world, log=log)
    readings = _Readings(cfg, judge, images_uint8, labels, rank, log, on_samples)
    step = 0
    restored = run.restore()
    if restored is not None:
        step, readings.history = nets.restore(*restored)
        run.resumed(f"step {step}", log_step=step)
    if world > 1:  # identical starting weights on every rank whatever happened above
        nets.broadcast_from_rank0()
    saved_step = step

    def save_checkpoint() -> None:
        nonlocal saved_step
        if not nets.finite():
            raise GanDivergedError(f"GAN weights became NaN/inf by step {step}; the last good checkpoint (step {saved_step}) "
                                   f"is kept at {run.path}; lower g_lr/d_lr or set r1_gamma > 0, then rerun")
        run.save(*nets.checkpoint(step, readings.history))
        saved_step = step

    run.begin()
    stopped = "completed"
    meter = _LossMeter(cfg, step)
    nets.G.train()
    nets.D.train()
    with progress_bar(progress and rank == 0) as bar:
        task = bar.add_task(f"GAN ({cfg.d_kind} D)", total=cfg.steps, completed=step)
        while step < cfg.steps:
            if run.budget_used() >= 1:
                stopped = f"time budget of {cfg.max_minutes} min reached at step {step}"
                break
            batch = data.batch(cfg, step, rank, world, memory_format)
            stats = _train_step(nets, cfg, batch, policy, amp, step, world)
            if not bool(torch.isfinite(stats).all()):
                raise GanDivergedError(
                    f"GAN training diverged at step {step + 1} (loss_d {stats[0]:.4g}, loss_g {stats[1]:.4g}); "
                    f"the last good checkpoint (step {saved_step}) is kept{f' at {run.path}' if run.path else ''}; "
                    "lower g_lr/d_lr or set r1_gamma > 0, then rerun")
            nets.opt_g.step()
            _ema_update(nets, cfg, step)
            step = step + 1
            meter.add(stats)
            bar.update(task, advance=1)
            if step % cfg.log_every == 0:
                row = meter.row(step)
                if log is not None and rank == 0:
                    log({k: round(v, 5) for k, v in row.items()}, step)
                bar.update(task, description=f"GAN ({cfg.d_kind} D) loss_d {row['loss_d']:.3f} loss_g {row['loss_g']:.3f}")
            readings.during(nets.G_ema, step)
            if step % cfg.checkpoint_every == 0:
                save_checkpoint()
    if step != saved_step:
        save_checkpoint()
    snap = _ema_snapshot(nets.G_ema, cfg.seed)
    readings.at_end(snap, step)
    if world > 1:
        dist.barrier()
    history = readings.history
    return GanResult(snap, step, run.elapsed(), stopped, history[-1] if history else {}, history)
