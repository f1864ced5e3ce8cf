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
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from classifiers import checkpoint as ckpt
from classifiers.labels import EXPRESSIONS
from classifiers.training import resume_log, setup_training
from generators.config import GanConfig
from generators.diffaugment import diff_augment, parse_policy
from generators.gan_networks import Generator, build_discriminator, build_generator, judge_logits
from generators.quality import QualityProbe
from generators.sampling import SAMPLING_FORMAT, sample, standing_statistics, to_generator_range

NUM_CLASSES = len(EXPRESSIONS)
GRID_COLUMNS = 8
GRID_SEED = 2 * 10**12

# config keys that do not change what a step computes, so changing them keeps a checkpoint usable
_NOT_FINGERPRINTED = ("steps", "max_minutes", "log_every", "sample_every", "quality_every", "quality_samples",
                      "checkpoint_every", "threads", "device")


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
    cuda = device.type == "cuda"
    # channels_last on CPU too: nearest upsampling of an NCHW tensor is ~7x slower there, and the
    # whole step measured 1.3x faster (benchmarks/bench_gan_step.py)
    memory_format = torch.channels_last if cfg.channels_last else torch.contiguous_format
    amp = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda and cfg.amp)

    torch.manual_seed(cfg.seed)
    judge_model = copy.deepcopy(judge.model).to(device, memory_format=memory_format).eval() if judge else None
    if judge_model is not None:
        judge_model.requires_grad_(False)
    G = build_generator(cfg).to(device, memory_format=memory_format)
    D = build_discriminator(cfg, judge_model).to(device, memory_format=memory_format)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    g_params = list(G.parameters())
    d_params = [p for p in D.parameters() if p.requires_grad]
    opt_g = torch.optim.Adam(g_params, lr=cfg.g_lr, betas=cfg.betas)
    opt_d = torch.optim.Adam(d_params, lr=cfg.d_lr, betas=cfg.betas)

    data = images_uint8.to(device)
    labels_dev = labels.to(device)
    counts = torch.bincount(labels, minlength=NUM_CLASSES).double()
    draw_p = (1.0 / counts.clamp(min=1))[labels]  # class-balanced: every class equally often
    policy = parse_policy(cfg.diffaug)
    local = cfg.batch_size // world
    mine = slice(rank * local, (rank + 1) * local)

    n = len(labels)
    fingerprint = {
        "config": {k: v for k, v in cfg.to_dict().items() if k not in _NOT_FINGERPRINTED},
        "world": world, "n_train": n,
        "data_sha256": ckpt.data_digest(images_uint8, labels),
        "judge": _tensor_digest(judge.model.state_dict()) if judge is not None else None,
    }
    last_path = checkpoint_dir / "last.safetensors" if checkpoint_dir else None
    step, elapsed, history = 0, 0.0, []
    if last_path is not None and last_path.exists():
        tensors, meta = ckpt.load_checkpoint(last_path)
        if meta.get("fingerprint") == fingerprint:
            G.load_state_dict(ckpt.unprefixed("G", tensors))
            D.load_state_dict(ckpt.unprefixed("D", tensors))
            G_ema.load_state_dict(ckpt.unprefixed("G_ema", tensors))
            ckpt.load_optimizer_state(opt_g, ckpt.unprefixed("opt_g", tensors), meta["opt_g"])
            ckpt.load_optimizer_state(opt_d, ckpt.unprefixed("opt_d", tensors), meta["opt_d"])
            torch.set_rng_state(tensors["rng.torch"])
            step, elapsed, history = meta["step"], meta["elapsed"], meta["history"]
            if rank == 0:
                print(f"resuming GAN training from {last_path} at step {step}", flush=True)
                resume_log(log, step)
        elif rank == 0:
            print(f"{last_path} was made with other settings or data; starting afresh", flush=True)
    if world > 1:  # identical starting weights on every rank whatever happened above
        for t in [*G.state_dict().values(), *D.state_dict().values(), *G_ema.state_dict().values()]:
            dist.broadcast(t, 0)

    saved_step = step

    def save_checkpoint() -> None:
        nonlocal saved_step
        if not _all_finite(G, D, G_ema):
            raise GanDivergedError(
                f"GAN weights became NaN/inf by step {step}; the last good checkpoint (step {saved_step}) "
                f"is kept at {last_path}; lower g_lr/d_lr or set r1_gamma > 0, then rerun")
        if last_path is None or rank != 0:
            saved_step = step
            return
        og, og_meta = ckpt.optimizer_state(opt_g)
        od, od_meta = ckpt.optimizer_state(opt_d)
        tensors = {**ckpt.prefixed("G", G.state_dict()), **ckpt.prefixed("D", D.state_dict()),
                   **ckpt.prefixed("G_ema", G_ema.state_dict()), **ckpt.prefixed("opt_g", og),
                   **ckpt.prefixed("opt_d", od), "rng.torch": torch.get_rng_state()}
        meta = {"kind": "gan-training", "fingerprint": fingerprint, "step": step, "elapsed": elapsed,
                "history": history, "opt_g": og_meta, "opt_d": od_meta}
        ckpt.save_checkpoint(last_path, tensors, meta)
        saved_step = step

    probe = QualityProbe(judge, images_uint8, labels, cfg.quality_samples, cfg.seed) if (judge is not None and rank == 0) else None

    def readings(snapshot: Generator) -> None:
        if probe is None:
            return
        q = {"step": step, **probe(lambda y, seeds: sample(snapshot, y, seeds))}
        history.append(q)
        if log is not None:
            row = {"gan_test": q["gan_test"]["overall"], "kid": q["kid"],
                   **{f"gan_test_{k}": v for k, v in q["gan_test"]["per_class"].items()}}
            log(row, step)

    grid_step = -1

    def snapshot_outputs(do_samples: bool, do_quality: bool) -> None:
        nonlocal grid_step
        if rank != 0 or not (do_samples or do_quality):
            return
        snap = _ema_snapshot(G_ema, cfg.seed)
        if do_samples and on_samples is not None:
            on_samples(grid_images(snap, cfg.seed), step)
            grid_step = step
        if do_quality:
            readings(snap)

    stopped = "completed"
    sums = torch.zeros(6, dtype=torch.float64)  # loss_d, loss_g, loss_cls, d_real, d_fake, loss_ms since last log
    t_log, steps_at_log = time.perf_counter(), step
    bar = Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
                   TimeElapsedColumn(), TimeRemainingColumn(), disable=not progress or rank != 0, transient=False)
    t_segment = time.perf_counter()
    elapsed_at_segment = elapsed
    G.train()
    D.train()
    with bar:
        task = bar.add_task(f"GAN ({cfg.d_kind} D)", total=cfg.steps, completed=step)
        while step < cfg.steps:
            elapsed = elapsed_at_segment + time.perf_counter() - t_segment
            if cfg.max_minutes is not None:
                used = elapsed / (60 * cfg.max_minutes)
                if world > 1:  # all ranks must stop at the same step
                    used_t = torch.tensor([used], dtype=torch.float64)
                    dist.all_reduce(used_t, op=dist.ReduceOp.MAX)
                    used = float(used_t)
                if used >= 1:
                    stopped = f"time budget of {cfg.max_minutes} min reached at step {step}"
                    break

            g_draw = _step_generator(cfg.seed, step, 0)  # same on every rank: the global batch
            g_aug = _step_generator(cfg.seed, step, 1 + rank)
            idx = torch.multinomial(draw_p, cfg.batch_size, replacement=True, generator=g_draw)[mine].to(device)
            z = torch.randn(cfg.batch_size, cfg.z_dim, generator=g_draw)[mine].to(device)
            real = to_generator_range(data[idx]).contiguous(memory_format=memory_format)
            y = labels_dev[idx]
            pairs = local // 2 if cfg.mode_seeking > 0 else 0
            y_fake = torch.cat([y[:pairs], y[:pairs], y[2 * pairs:]]) if pairs else y  # fake i and i + pairs share a label

            with amp:
                fake = G(z, y_fake)
            # D step: hinge loss on augmented reals and fakes, one pass over both
            with amp:
                both = diff_augment(torch.cat([real, fake.detach()]), policy, g_aug)
                out = D(both, torch.cat([y, y_fake])).float()
                d_real, d_fake = out[:local], out[local:]
                loss_d = F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            if cfg.r1_gamma > 0 and step % cfg.r1_every == 0:
                x = diff_augment(real, policy, g_aug).detach().requires_grad_(True)
                with amp:
                    score = D(x, y).float().sum()
                (grad,) = torch.autograd.grad(score, x, create_graph=True)
                r1 = grad.float().square().sum(dim=(1, 2, 3)).mean() * (cfg.r1_gamma / 2 * cfg.r1_every)
                r1.backward()
            if world > 1:
                _average_gradients(d_params, world)
            opt_d.step()

            # G step: through the updated D (its weights get no gradient), plus optional judge guidance
            with amp:
                fake_aug = diff_augment(fake, policy, g_aug)
                logits = None
                if cfg.judge_guidance > 0 and cfg.d_kind == "projected" and cfg.judge_penultimate:
                    out_g, logits = D.forward_with_logits(fake_aug, y_fake)
                else:
                    out_g = D(fake_aug, y_fake)
                if cfg.judge_guidance > 0 and logits is None:
                    logits = judge_logits(judge_model, fake_aug)
                loss_adv = -out_g.float().mean()
                loss_cls = F.cross_entropy(logits.float(), y_fake) if logits is not None else torch.zeros((), device=device)
                loss_g = loss_adv + cfg.judge_guidance * loss_cls
                loss_ms = torch.zeros((), device=device)
                if pairs:
                    loss_ms = mode_seeking_loss(fake[:pairs].float(), fake[pairs:2 * pairs].float(),
                                                z[:pairs], z[pairs:2 * pairs])
                    loss_g = loss_g + cfg.mode_seeking * loss_ms
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward(inputs=g_params)
            if world > 1:
                _average_gradients(g_params, world)

            stats = torch.stack([loss_d.detach(), loss_adv.detach(), loss_cls.detach(), d_real.detach().mean(),
                                 d_fake.detach().mean(), loss_ms.detach()]).double().cpu()
            if not bool(torch.isfinite(stats).all()):
                raise GanDivergedError(
                    f"GAN training diverged at step {step + 1} (loss_d {stats[0]:.4g}, loss_g {stats[1]:.4g}); "
                    f"the last good checkpoint (step {saved_step}) is kept"
                    f"{f' at {last_path}' if last_path else ''}; lower g_lr/d_lr or set r1_gamma > 0, then rerun")
            opt_g.step()
            with torch.no_grad():
                decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # short memory early, when G changes fast
                torch._foreach_lerp_(list(G_ema.parameters()), g_params, 1 - decay)
                for b_ema, b in zip(G_ema.buffers(), G.buffers()):
                    b_ema.copy_(b)
            step += 1
            sums += stats
            bar.update(task, advance=1)

            if step % cfg.log_every == 0:
                now = time.perf_counter()
                mean = (sums / max(1, step - steps_at_log)).tolist()
                row = {"loss_d": mean[0], "loss_g": mean[1], "d_real": mean[3], "d_fake": mean[4],
                       "steps_per_s": (step - steps_at_log) / max(1e-9, now - t_log)}
                if cfg.judge_guidance > 0:
                    row["loss_cls"] = mean[2]
                if cfg.mode_seeking > 0:
                    row["loss_ms"] = mean[5]
                if log is not None and rank == 0:
                    log({k: round(v, 5) for k, v in row.items()}, step)
                bar.update(task, description=f"GAN ({cfg.d_kind} D) loss_d {mean[0]:.3f} loss_g {mean[1]:.3f}")
                sums.zero_()
                t_log, steps_at_log = now, step
            snapshot_outputs(step % cfg.sample_every == 0, step % cfg.quality_every == 0)
            if step % cfg.checkpoint_every == 0:
                elapsed = elapsed_at_segment + time.perf_counter() - t_segment
                save_checkpoint()

    elapsed = elapsed_at_segment + time.perf_counter() - t_segment
    if step != saved_step:
        save_checkpoint()
    snap = _ema_snapshot(G_ema, cfg.seed)
    if rank == 0:
        if on_samples is not None and grid_step != step:
            on_samples(grid_images(snap, cfg.seed), step)
        if probe is not None and (not history or history[-1]["step"] != step):
            readings(snap)
    if world > 1:
        dist.barrier()
    return GanResult(snap, step, elapsed, stopped, history[-1] if history else {}, history)
