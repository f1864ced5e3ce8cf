"""Grad-CAM: which regions of a face drive the classifier towards an expression.

Grad-CAM (Selvaraju et al. 2017) comes from captum's `LayerGradCam`; this module picks the layer,
upsamples and normalises the maps, and draws them over the faces. The layer is the deepest one whose
output is still at least 6x6 for a 48x48 face: the last stage is 3x3 for most of our architectures,
too coarse to tell the eyes from the mouth, and on the FER2013 vgg_fer a shallower layer (the output
of the 6x6 stage) left 24% of the maps empty against 0% for the last 6x6 ReLU, whose maps also pass
the deletion check better (graying out the hottest 12x12 block costs 0.066 probability, the coldest 0.007).
"""

from __future__ import annotations

import io
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from classifiers.augment import preprocess
from classifiers.config import TrainConfig
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS

MIN_CAM_SIDE = 6


def default_layer(model: nn.Module) -> nn.Module:
    """The deepest module whose output is still at least 6x6 for a 48x48 face.

    "Deepest" is the last to finish in a forward pass, among modules that run once per pass (captum
    hooks one call). For vgg_fer and compact_cnn that is the last ReLU before the final max-pool, for
    resnet18 the last stage, for mobilenet_v3_small the expansion of its first 3x3-resolution block.
    """
    finished: list[tuple[nn.Module, tuple[int, ...]]] = []

    def record(module: nn.Module, inputs: object, output: object) -> None:
        if isinstance(output, Tensor):
            finished.append((module, tuple(output.shape)))

    hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, 1, 48, 48))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    calls = Counter(id(m) for m, _ in finished)
    candidates = [m for m, shape in finished
                  if len(shape) == 4 and min(shape[-2:]) >= MIN_CAM_SIDE and calls[id(m)] == 1]
    if not candidates:
        raise ValueError(f"{type(model).__name__}: no layer keeps a {MIN_CAM_SIDE}x{MIN_CAM_SIDE} map")
    return candidates[-1]


def resolve_targets(target: int | str | Sequence[int] | Tensor, n: int) -> Tensor:
    """Class index per face from one expression (name or index) or one label per face."""
    if isinstance(target, str):
        if target not in EXPRESSIONS:
            raise UserError(f"unknown expression {target!r}; choose one of: {', '.join(EXPRESSIONS)}")
        target = EXPRESSIONS.index(target)
    if isinstance(target, int):
        if not 0 <= target < len(EXPRESSIONS):
            raise UserError(f"class index {target} out of range 0..{len(EXPRESSIONS) - 1}")
        return torch.full((n,), target, dtype=torch.long)
    targets = torch.as_tensor(target, dtype=torch.long).reshape(-1)
    if len(targets) != n:
        raise ValueError(f"{len(targets)} targets for {n} faces")
    return targets


def gradcam(model: nn.Module, cfg: TrainConfig, images_uint8: Tensor, target: int | str | Sequence[int] | Tensor,
            layer: nn.Module | None = None, batch_size: int = 64) -> Tensor:
    """Grad-CAM maps (N, 48, 48) in [0, 1] for uint8 faces (N, 1, 48, 48) and a class (or one per face).

    Each map is ReLU(sum_k w_k A_k) at `layer`, bilinearly upsampled to 48x48 and divided by its
    maximum (an all-zero map stays zero: nothing in the face pushes towards that class).
    """
    from captum.attr import LayerAttribution, LayerGradCam

    model.eval()
    targets = resolve_targets(target, len(images_uint8))
    cam = LayerGradCam(model, layer if layer is not None else default_layer(model))
    maps = []
    with torch.enable_grad():
        for i in range(0, len(images_uint8), batch_size):
            x = preprocess(images_uint8[i : i + batch_size], cfg.augment.equalize).requires_grad_(True)
            attr = cam.attribute(x, target=targets[i : i + batch_size], relu_attributions=True)
            attr = LayerAttribution.interpolate(attr.detach(), tuple(x.shape[-2:]), interpolate_mode="bilinear")
            maps.append(attr[:, 0].clamp(min=0))
    out = torch.cat(maps) if maps else torch.zeros(0, *images_uint8.shape[-2:])
    peak = out.flatten(1).amax(1).clamp(min=1e-12).view(-1, 1, 1)
    return out / peak


def sample_per_class(labels: Tensor, per_class: int, seed: int = 0) -> Tensor:
    """Indices of up to `per_class` faces of each expression, class by class (a fixed, seeded draw)."""
    gen = torch.Generator().manual_seed(seed)
    picked = []
    for k in range(len(EXPRESSIONS)):
        idx = torch.nonzero(labels == k).flatten()
        picked.append(idx[torch.randperm(len(idx), generator=gen)[:per_class]].sort().values)
    return torch.cat(picked)


def gradcam_grid(model: nn.Module, cfg: TrainConfig, images_uint8: Tensor,
                 labels_or_class: int | str | Sequence[int] | Tensor, path: str | Path | None = None, *,
                 ncols: int = 8, layer: nn.Module | None = None, title: str = "") -> Path | bytes:
    """A PNG of the faces (top of each pair of rows) and their Grad-CAM overlays (below).

    `labels_or_class` is the class explained: one expression for all faces, or one label per face.
    Each face is titled with that class and the model's probability for it. Written atomically to
    `path` (returned), or returned as PNG bytes when `path` is None.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from classifiers.training import predict_proba
    from figures import charts as plots

    n = len(images_uint8)
    if n == 0:
        raise UserError("no faces to explain")
    targets = resolve_targets(labels_or_class, n)
    maps = gradcam(model, cfg, images_uint8, targets, layer).numpy()
    probs = predict_proba(model, images_uint8, cfg, tta="none")
    ncols = max(1, min(ncols, n))
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(2 * nrows, ncols, figsize=(1.3 * ncols, 2.75 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i in range(n):
        r, c = divmod(i, ncols)
        face = images_uint8[i, 0].numpy()
        k = int(targets[i])
        axes[2 * r, c].imshow(face, cmap="gray", vmin=0, vmax=255)
        axes[2 * r, c].set_title(f"{EXPRESSIONS[k]} {float(probs[i, k]):.2f}", fontsize=7)
        axes[2 * r + 1, c].imshow(face, cmap="gray", vmin=0, vmax=255)
        axes[2 * r + 1, c].imshow(np.ma.masked_less(maps[i], 0.05), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    fig.tight_layout(pad=0.3)
    if title:  # above the axes; bbox_inches="tight" keeps it in the PNG
        fig.suptitle(title, fontsize=9, y=1.0, va="bottom")
    if path is not None:
        plots.save_figure(fig, path)
        return Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def run_explain(model_path: Path, out: Path, *, photos: Sequence[Path] = (), data_dir: Path = Path("data/prepared"),
                split: str = "test", target: str = "true", per_class: int = 4, seed: int = 0,
                margin: float = 0.0) -> Path:
    """Grad-CAM grid for faces of a prepared split (per_class of each expression) or faces found in photos.

    `target`: "true" (each face's label; prepared data only), "predicted", or an expression name.
    """
    from classifiers.training import predict_proba
    from tools.predict import FaceDetector, crop_faces, load_model, read_photo, to_gray

    if target not in ("true", "predicted", *EXPRESSIONS):
        raise UserError(f"--target {target!r}: use true, predicted or one of {', '.join(EXPRESSIONS)}")
    if out.suffix.lower() != ".png":
        raise UserError(f"--out {out}: the Grad-CAM grid is a PNG; give a path ending in .png")
    model, cfg = load_model(model_path)
    if photos:
        if target == "true":
            raise UserError("--target true needs labelled faces from --data; with photos use predicted or an expression")
        detector, faces = FaceDetector(), []
        for path in photos:
            try:
                gray = to_gray(read_photo(Path(path)))
            except ValueError as e:
                raise UserError(f"{path}: {e}; pass readable image files") from None
            faces.append(crop_faces(gray, detector.detect(gray), margin)[0])
        images = torch.cat(faces)
        if not len(images):
            raise UserError(f"no face found in {', '.join(map(str, photos))}")
        labels, ncols = None, 8
    else:
        from facedata.prepared import SPLITS, load_split

        if split not in SPLITS:
            raise UserError(f"--split {split!r}: use one of {', '.join(SPLITS)}")
        if per_class < 1:
            raise UserError(f"--per-class must be >= 1, got {per_class}")
        data = load_split(Path(data_dir) / f"{split}.safetensors")
        index = sample_per_class(data.labels, per_class, seed)
        images, labels, ncols = data.images[index], data.labels[index], per_class
    if target == "true":
        chosen = labels
    elif target == "predicted":
        chosen = predict_proba(model, images, cfg).argmax(1)
    else:
        chosen = target
    path = gradcam_grid(model, cfg, images, chosen, out, ncols=ncols,
                        title=f"Grad-CAM ({target}) - {cfg.arch} {Path(model_path)}")
    print(f"Grad-CAM of {len(images)} faces -> {path}")
    return path
