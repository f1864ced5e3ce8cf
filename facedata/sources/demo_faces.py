"""Procedurally drawn 7-expression cartoon faces (48x48 grayscale) that need no download.

The demo set lets a newcomer and the test-suite run the whole pipeline offline. It is not a
substitute for real data, but it is a genuine classification problem: identity, pose, lighting,
noise and a per-image expression intensity vary, and weak expressions overlap with neutral.

Hand-written on purpose: no library draws labelled parametric faces, and drawing them with PIL
would need a Python loop per image. Here a whole batch is drawn at once in torch from per-image
parameter tensors, coordinate grids and soft (sigmoid) signed-distance masks. Each feature is
computed only inside the band of the face-aligned canvas that can hold it (symmetric ones on one
half, then mirrored), and one affine resampling applies the pose.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from runtime.errors import UserError

CLASS_NAMES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")  # FER2013 order 0..6
SIZE = 48
_CHUNK = 256  # images drawn at a time: small enough for the working set to stay in cache

# Expression targets per class, in FER2013 order (angry, disgust, fear, happy, sad, surprise,
# neutral). An image moves from neutral (last column) towards its class target by a random
# intensity, then gets per-image noise, so weak expressions look almost neutral. Units are
# face-aligned canvas coordinates in [-1, 1], y pointing down.
_TARGETS = {
    #                angry  disg   fear   happy  sad    surpr  neutral
    "brow_lift": (-0.07, -0.05, 0.10, 0.02, 0.02, 0.14, 0.0),  # + = brows higher
    "brow_tilt": (0.09, 0.04, -0.05, 0.0, -0.08, 0.0, 0.0),  # + = inner ends down
    "brow_arch": (0.0, 0.0, -0.01, -0.02, 0.0, -0.05, -0.01),  # - = middle higher
    "eye_open": (0.75, 0.40, 1.45, 0.55, 0.80, 1.55, 1.0),  # eye-opening multiplier
    "lid_raise": (0.0, 0.35, 0.0, 0.75, 0.0, 0.0, 0.0),  # lower lid pushed up (cheeks)
    "mouth_curve": (-0.02, -0.03, -0.04, 0.13, -0.10, 0.0, 0.0),  # + = corners up
    "mouth_width": (0.17, 0.21, 0.32, 0.28, 0.20, 0.12, 0.22),  # half-width
    "mouth_open": (0.0, 0.025, 0.065, 0.0, 0.0, 0.11, 0.0),  # half-height of the opening
    "mouth_square": (0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0),  # 0 = oval, 1 = rounded rectangle
    "mouth_thick": (0.075, 0.05, 0.045, 0.05, 0.05, 0.045, 0.05),  # lip-line thickness
    "lip_raise": (0.0, 0.09, 0.0, 0.0, 0.0, 0.0, 0.0),  # one side of the upper lip raised
    "wrinkle": (0.25, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0),  # nose-bridge wrinkle lines
}
# Per-image spread of each expression parameter, and the range it is clamped to (which keeps
# every feature inside the canvas band it is drawn in).
_SPREAD = {
    "brow_lift": (0.025, -0.12, 0.22),
    "brow_tilt": (0.02, -0.14, 0.14),
    "brow_arch": (0.012, -0.08, 0.04),
    "eye_open": (0.12, 0.15, 2.0),
    "lid_raise": (0.08, 0.0, 1.0),
    "mouth_curve": (0.025, -0.2, 0.2),
    "mouth_width": (0.025, 0.08, 0.42),
    "mouth_open": (0.01, 0.0, 0.16),
    "mouth_square": (0.0, 0.0, 1.0),
    "mouth_thick": (0.008, 0.03, 0.09),
    "lip_raise": (0.015, 0.0, 0.14),
    "wrinkle": (0.1, 0.0, 1.0),
}


def _count(value: object, counts: object) -> int:
    if isinstance(value, bool):
        raise UserError(f"counts must be an int or {len(CLASS_NAMES)} ints (one per class), got {counts!r}")
    try:
        count = operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise UserError(f"counts must be an int or {len(CLASS_NAMES)} ints (one per class), got {counts!r}") from None
    if count < 0:
        raise UserError(f"counts must not be negative, got {counts!r}")
    return count


def _counts_per_class(counts: int | Sequence[int]) -> list[int]:
    if hasattr(counts, "__index__"):  # one count for every class
        return [_count(counts, counts)] * len(CLASS_NAMES)
    per_class = [_count(c, counts) for c in counts] if isinstance(counts, Sequence) else []
    if len(per_class) != len(CLASS_NAMES):
        raise UserError(f"counts must be an int or {len(CLASS_NAMES)} ints (one per class), got {counts!r}")
    return per_class


def _uniform(g: torch.Generator, n: int, lo: float, hi: float) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=g)


def _coin(g: torch.Generator, n: int, p: float) -> torch.Tensor:
    return (torch.rand(n, generator=g) < p).float()


def _draw_params(labels: torch.Tensor, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Per-image parameters as 1-D tensors; all randomness except pixel noise is drawn here."""
    n = labels.numel()
    p: dict[str, torch.Tensor] = {}
    # Expression intensity: mostly clear, sometimes weak (close to neutral).
    weak = torch.rand(n, generator=g) < 0.2
    p["intensity"] = torch.where(weak, _uniform(g, n, 0.15, 0.5), _uniform(g, n, 0.5, 1.15))
    for name, targets in _TARGETS.items():
        table = torch.tensor(targets)
        neutral = table[-1]
        spread, lo, hi = _SPREAD[name]
        value = neutral + p["intensity"] * (table[labels] - neutral) + spread * torch.randn(n, generator=g)
        p[name] = value.clamp(lo, hi)
    # Happy: sometimes an open "D" smile showing teeth.
    open_smile = (labels == CLASS_NAMES.index("happy")).float() * _coin(g, n, 0.4)
    p["smile_open"] = open_smile * p["intensity"].clamp(max=1.0) * _uniform(g, n, 0.07, 0.13)
    p["sneer_side"] = 2.0 * _coin(g, n, 0.5) - 1.0
    # Identity.
    p["face_w"] = _uniform(g, n, 0.62, 0.76)
    p["face_h"] = _uniform(g, n, 0.78, 0.88)
    p["skin"] = _uniform(g, n, 0.45, 0.92)
    gap = _uniform(g, n, 0.22, 0.5) * (2.0 * _coin(g, n, 0.5) - 1.0)
    bg = p["skin"] + gap
    p["bg"] = torch.where((bg < 0.0) | (bg > 1.0), p["skin"] - gap, bg).clamp(0.0, 1.0)
    p["ink"] = _uniform(g, n, 0.0, 0.18)
    p["eye_x"] = _uniform(g, n, 0.24, 0.31)
    p["eye_y"] = _uniform(g, n, -0.17, -0.07)
    p["eye_w"] = _uniform(g, n, 0.11, 0.15)
    p["eye_h"] = _uniform(g, n, 0.07, 0.09)
    p["pupil_r"] = _uniform(g, n, 0.05, 0.07)
    p["gaze"] = _uniform(g, n, -0.02, 0.02)
    p["brow_gap"] = _uniform(g, n, 0.15, 0.2)
    p["brow_w"] = _uniform(g, n, 0.1, 0.14)
    p["brow_t"] = _uniform(g, n, 0.045, 0.07)
    p["mouth_y"] = _uniform(g, n, 0.4, 0.48)
    p["nose_y"] = _uniform(g, n, 0.14, 0.22)
    p["has_hair"] = _coin(g, n, 0.6)
    p["hair"] = torch.where(torch.rand(n, generator=g) < 0.7, _uniform(g, n, 0.0, 0.3), _uniform(g, n, 0.7, 1.0))
    p["hairline"] = _uniform(g, n, -0.66, -0.56)
    p["has_glasses"] = _coin(g, n, 0.2)
    # Pose.
    p["angle"] = _uniform(g, n, -0.2, 0.2)
    p["scale"] = _uniform(g, n, 0.92, 1.12)
    p["shift_x"] = _uniform(g, n, -0.08, 0.08)
    p["shift_y"] = _uniform(g, n, -0.08, 0.08)
    # Rendering: edge softness (pixels), side-light, blur, pixel noise.
    p["soft"] = _uniform(g, n, 0.35, 0.7)
    p["light_dir"] = _uniform(g, n, 0.0, 2.0 * math.pi)
    p["light"] = _uniform(g, n, 0.0, 0.35)
    p["blur"] = _uniform(g, n, 0.0, 0.5)
    p["noise"] = _uniform(g, n, 0.005, 0.035)
    return p


def _band(lo: float, hi: float) -> slice:
    """Pixel indices whose centres cover canvas coordinates lo..hi."""
    return slice(max(0, math.floor((lo + 1.0) * SIZE / 2.0)), min(SIZE, math.ceil((hi + 1.0) * SIZE / 2.0)))


# Canvas bands each feature is drawn in; the parameter clamps above keep features inside them.
_EYES = (_band(-0.9, 0.3), _band(0.0, 0.7))  # right half, mirrored
_NOSE = (_band(-0.25, 0.42), _band(0.0, 0.3))  # right half, mirrored
_MOUTH = (_band(-0.05, 0.98), _band(-0.56, 0.56))
_AXIS = (torch.arange(SIZE, dtype=torch.float32) + 0.5) * (2.0 / SIZE) - 1.0


def _grid(rows: slice, cols: slice) -> tuple[torch.Tensor, torch.Tensor]:
    return _AXIS[cols][None, None, :], _AXIS[rows][None, :, None]


def _shape(
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    cx: torch.Tensor | float,
    cy: torch.Tensor,
    half_w: torch.Tensor | float,
    slope: torch.Tensor | float = 0.0,
    curve: torch.Tensor | float = 0.0,
    top: torch.Tensor | float = 0.0,
    bottom: torch.Tensor | float = 0.0,
    square: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Approximate signed distance (negative inside) to a bent oval, and y minus its centre line.

    Along s = (x - cx) / half_w the centre line is c(s) = cy + slope*s + curve*s^2 (level past
    the ends); the shape reaches `top` above it and `bottom` below it, as a superellipse with
    exponent 2 (oval) to 6 (rounded rectangle, `square` = 1). Zero heights give a flat shape whose
    outline is a stroke (brows, closed mouths). The distance is the first-order estimate
    f / |grad f|, exact on the boundary, bounded below by the distance past the ends.
    """
    s = (x - cx) / half_w
    sc = s.clamp(-1.0, 1.0)
    dc = (slope + 2.0 * curve * sc) * (s.abs() < 1.0)
    dy = y - (cy + slope * sc + curve * sc * sc)
    h = torch.where(dy < 0, top, bottom).clamp(min=0.005)
    u = dy / h
    if square is None:  # oval: exponent 2
        rho = torch.sqrt(s * s + u * u)
        gu, gs = u / h, s
        rho_pow = rho  # rho^(q-1)
    else:
        q = 2.0 + 4.0 * square
        sa, ua = s.abs().clamp(min=1e-4), u.abs().clamp(min=1e-4)
        rho = (sa.pow(q) + ua.pow(q)).pow(1.0 / q)
        gu, gs = ua.pow(q - 1.0) * torch.sign(u) / h, sa.pow(q - 1.0) * torch.sign(s)
        rho_pow = rho.pow(q - 1.0)
    # |grad rho| = |(d/dx, d/dy) of rho^q| / (q rho^(q-1)); the centre line's slope enters via u.
    grad = torch.sqrt(((gs - gu * dc) / half_w) ** 2 + gu * gu) / rho_pow.clamp(min=1e-6)
    grad = grad.clamp(min=1.0 / torch.maximum(torch.as_tensor(half_w), h))
    return torch.maximum((rho - 1.0) / grad, (s.abs() - 1.0) * half_w), dy


def _fill(sd: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return torch.sigmoid(-sd / w)


def _line(sd: torch.Tensor, w: torch.Tensor, thick: torch.Tensor | float) -> torch.Tensor:
    return torch.sigmoid((0.5 * thick - sd.abs()) / w)


def _paint(
    img: torch.Tensor, box: tuple[slice, slice], mask: torch.Tensor, tone: torch.Tensor | float, mirror: bool = False
) -> None:
    """Blend `tone` into img[:, rows, cols] with `mask`; a mirrored mask covers both halves."""
    rows, cols = box
    if mirror:
        mask = torch.cat([mask.flip(-1), mask], dim=-1)
        cols = slice(SIZE - cols.stop, cols.stop)
    region = img[:, rows, cols]
    img[:, rows, cols] = region + mask * (tone - region)


def _canvas(p: dict[str, torch.Tensor]) -> torch.Tensor:
    """Draw upright, centred faces on the face-aligned canvas; returns N x 48 x 48 in [0, 1]."""
    c = {k: v[:, None, None] for k, v in p.items()}
    n = p["skin"].numel()
    w = c["soft"] * (2.0 / SIZE)  # edge width: a third of a pixel to two thirds
    ink = c["ink"]
    img = c["bg"].expand(n, SIZE, SIZE).clone()

    # Face: an outlined ellipse; hair: a cap over the forehead and down the sides, on some faces.
    x, y = _grid(slice(0, SIZE), slice(0, SIZE))
    everything = (slice(0, SIZE), slice(0, SIZE))
    face_sd = (1.0 - torch.sqrt((x / c["face_w"]) ** 2 + (y / c["face_h"]) ** 2)) * c["face_w"]
    _paint(img, everything, torch.sigmoid(face_sd / w), c["skin"])
    _paint(img, everything, 0.6 * torch.sigmoid((0.025 - face_sd.abs()) / w), ink)
    hair_d = torch.sqrt((x / (c["face_w"] * 1.1)) ** 2 + ((y + 0.03) / (c["face_h"] * 1.07)) ** 2)
    above = torch.sigmoid((c["hairline"] + 0.35 * x * x - y) / w)
    sides = torch.sigmoid(-face_sd / w) * torch.sigmoid((0.05 - y) / w)
    hair = c["has_hair"] * torch.sigmoid((1.0 - hair_d) * c["face_w"] / w) * torch.maximum(above, sides)
    _paint(img, everything, hair, c["hair"])

    # Eyes and brows, drawn on the right half and mirrored; the inner end of a brow is s = -1.
    x, y = _grid(*_EYES)
    eye_y = c["eye_y"]
    eye_h = c["eye_h"] * c["eye_open"]
    lid = c["lid_raise"] * c["eye_h"]
    # Eyes: white between the lids, pupil clipped to the opening, a bold upper lid and a fainter
    # lower one. Raised lower lids (cheeks) bend the eye into an arch.
    eye_sd, eye_dy = _shape(
        x, y, cx=c["eye_x"], cy=eye_y, half_w=c["eye_w"], curve=lid,
        top=eye_h + 0.3 * lid, bottom=(eye_h - 1.3 * lid).clamp(min=0.0),
    )  # fmt: skip
    eye_fill = _fill(eye_sd, w)
    _paint(img, _EYES, eye_fill, 0.97, mirror=True)
    pupil_d = torch.sqrt((x - c["eye_x"] - c["gaze"]) ** 2 + (y - eye_y) ** 2)
    _paint(img, _EYES, torch.sigmoid((c["pupil_r"] - pupil_d) / w) * eye_fill, ink, mirror=True)
    lids = _line(eye_sd, w, 0.055) * (0.4 + 0.6 * torch.sigmoid(-eye_dy / w))
    # Brows: thick strokes above the eyes; tilt lowers the inner ends, lift raises both.
    brow_y = eye_y - c["brow_gap"] - c["brow_lift"] - 0.5 * c["eye_h"] * (c["eye_open"] - 1.0).clamp(min=0.0)
    brow_sd, _ = _shape(
        x, y, cx=c["eye_x"] - 0.01, cy=brow_y, half_w=c["brow_w"], slope=-c["brow_tilt"], curve=c["brow_arch"]
    )
    # Glasses: a ring round each eye and a bridge, on some faces.
    ring_r = c["eye_w"] + 0.05
    ring = torch.sigmoid((0.02 - (torch.sqrt((x - c["eye_x"]) ** 2 + (y - eye_y) ** 2) - ring_r).abs()) / w)
    bridge = torch.sigmoid((0.015 - (y - eye_y).abs()) / w) * torch.sigmoid((c["eye_x"] - ring_r - x) / w)
    glasses = 0.85 * c["has_glasses"] * torch.maximum(ring, bridge)
    strokes = torch.maximum(torch.maximum(lids, _line(brow_sd, w, c["brow_t"])), glasses)
    _paint(img, _EYES, strokes, ink, mirror=True)

    # Nose: a small soft arc; disgust (and a little anger) adds wrinkles across the bridge.
    x, y = _grid(*_NOSE)
    nose_sd, _ = _shape(x, y, cx=0.0, cy=c["nose_y"], half_w=0.07, curve=0.04)
    wrinkle_sd = torch.minimum(
        _shape(x, y, cx=0.08, cy=eye_y + 0.12, half_w=0.05, slope=0.02)[0],
        _shape(x, y, cx=0.08, cy=eye_y + 0.2, half_w=0.045, slope=0.02)[0],
    )
    nose = torch.maximum(0.55 * _line(nose_sd, w, 0.045), 0.8 * c["wrinkle"] * _line(wrinkle_sd, w, 0.035))
    _paint(img, _NOSE, nose, ink, mirror=True)

    # Mouth: a curved stroke that opens into an oval, a rounded rectangle or a "D" smile; a sneer
    # tilts it and opens the upper lip on one side.
    x, y = _grid(*_MOUTH)
    mw = c["mouth_width"]
    mc = c["mouth_curve"]
    open_top = c["mouth_open"] + (c["sneer_side"] * x / mw).clamp(0.0, 1.0) * c["lip_raise"]
    mouth_sd, mouth_dy = _shape(
        x, y, cx=0.0, cy=c["mouth_y"] + 0.5 * mc, half_w=mw, slope=-0.4 * c["lip_raise"] * c["sneer_side"],
        curve=-mc, top=open_top, bottom=c["mouth_open"] + c["smile_open"], square=c["mouth_square"],
    )  # fmt: skip
    mouth_fill = _fill(mouth_sd, w)
    # Inside: dark, with a light band of teeth under the upper lip of wide open mouths.
    teeth = (c["mouth_square"] * c["mouth_open"] + c["smile_open"] > 0.025).float()
    teeth = teeth * torch.sigmoid((0.06 - open_top - mouth_dy) / w)
    inside = 0.5 * ink + teeth * (0.92 - 0.5 * ink)
    _paint(img, _MOUTH, mouth_fill, inside)
    _paint(img, _MOUTH, _line(mouth_sd, w, c["mouth_thick"]), ink)
    return img


def _blur3(img: torch.Tensor) -> torch.Tensor:
    """Separable [1, 2, 1] / 4 blur with edge padding, written as shifts so it is bit-exact."""
    p = F.pad(img[:, None], (1, 1, 1, 1), mode="replicate")[:, 0]
    h = 0.25 * p[:, :, :-2] + 0.5 * p[:, :, 1:-1] + 0.25 * p[:, :, 2:]
    return 0.25 * h[:, :-2] + 0.5 * h[:, 1:-1] + 0.25 * h[:, 2:]


def _render(p: dict[str, torch.Tensor], g: torch.Generator) -> torch.Tensor:
    """Draw a chunk: canvas, then pose (rotate, scale, shift), side-light, blur and pixel noise."""
    img = _canvas(p)
    n = img.shape[0]
    cos, sin, scale = torch.cos(p["angle"]), torch.sin(p["angle"]), p["scale"]
    tx, ty = p["shift_x"], p["shift_y"]
    # Output pixel (x, y) samples the canvas at R(-angle) ((x, y) - shift) / scale.
    theta = torch.stack(
        [
            torch.stack([cos, sin, -(cos * tx + sin * ty)], dim=1),
            torch.stack([-sin, cos, sin * tx - cos * ty], dim=1),
        ],
        dim=1,
    ) / scale[:, None, None]
    grid = F.affine_grid(theta, [n, 1, SIZE, SIZE], align_corners=False)
    img = F.grid_sample(img[:, None], grid, mode="bilinear", padding_mode="border", align_corners=False)[:, 0]
    x, y = _grid(slice(0, SIZE), slice(0, SIZE))
    light = p["light"] * torch.cos(p["light_dir"]), p["light"] * torch.sin(p["light_dir"])
    img = img * (1.0 + light[0][:, None, None] * x + light[1][:, None, None] * y)
    img = img + p["blur"][:, None, None] * (_blur3(img) - img)
    img = img + p["noise"][:, None, None] * torch.randn(img.shape, generator=g)
    return img.clamp(0.0, 1.0)


def draw_demo_faces(counts: int | Sequence[int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw cartoon faces labelled in FER2013 order (indices into CLASS_NAMES).

    counts: images per class (one int for all, or 7 ints). Returns (images uint8 N x 1 x 48 x 48,
    labels int64 N), labels grouped by class in order then shuffled with the seed. The same
    counts and seed give byte-identical results.
    """
    per_class = _counts_per_class(counts)
    g = torch.Generator().manual_seed(int(seed))
    labels = torch.repeat_interleave(torch.arange(len(CLASS_NAMES)), torch.tensor(per_class, dtype=torch.int64))
    labels = labels[torch.randperm(labels.numel(), generator=g)]
    params = _draw_params(labels, g)
    images = torch.zeros(labels.numel(), 1, SIZE, SIZE, dtype=torch.uint8)
    # One thread: drawing is hundreds of small element-wise ops, and with two threads each op
    # waits for both; on a busy 2-core machine that made it 5-50x slower, one thread never was.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for start in range(0, labels.numel(), _CHUNK):
            chunk = {k: v[start : start + _CHUNK] for k, v in params.items()}
            images[start : start + _CHUNK, 0] = (_render(chunk, g) * 255.0).round().to(torch.uint8)
    finally:
        torch.set_num_threads(threads)
    return images, labels
