"""A trained classifier as ONNX for edge devices, checked against PyTorch, plus int8 versions.

The ONNX graph takes raw pixels: `pixels` float32 (N, 1, 48, 48) in [0, 255] (batch size dynamic)
and returns `logits` and `probabilities` (N, 7, FER2013 order). The training normalisation is inside
the graph, so a consumer only needs a 48x48 grayscale face. Models trained with histogram
equalisation (augment.equalize) expect equalised faces; the ONNX metadata says so.

Quantisation is onnxruntime's: dynamic (int8 weights, activations quantised on the fly; onnxruntime
runs int8 convolutions that way slowly on CPU, so this mainly shrinks the file) and static (QDQ,
int8 weights per channel and uint8 activations calibrated on val faces; the fast one on CPU).
Accuracy on test is single-view (no test-time augmentation) for all four so they compare like for like.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from classifiers.augment import MEAN, STD
from classifiers.config import TrainConfig
from runtime import atomic
from runtime.errors import UserError
from runtime.labels import EXPRESSIONS

PARITY_ATOL = 1e-4
OPSET = 18
VARIANTS = ("model.onnx", "model.int8-dynamic.onnx", "model.int8-static.onnx")


class PixelClassifier(nn.Module):
    """Raw pixels in [0, 255] -> (logits, probabilities): the training normalisation, then the model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixels: Tensor) -> tuple[Tensor, Tensor]:
        logits = self.model(pixels * (1.0 / (255.0 * STD)) - MEAN / STD)
        return logits, torch.softmax(logits, dim=1)


def onnx_pixels(images_uint8: Tensor, cfg: TrainConfig) -> np.ndarray:
    """The ONNX input for uint8 faces (N, 1, 48, 48): float32 pixels, equalised if the model was trained so."""
    if cfg.augment.equalize:
        from torchvision.transforms.v2 import functional as TF

        images_uint8 = TF.equalize(images_uint8)
    return images_uint8.to(torch.float32).numpy()


def export_onnx(model: nn.Module, cfg: TrainConfig, path: str | Path) -> Path:
    """Write `model` as a single-file ONNX graph (torch.onnx dynamo exporter, dynamic batch), atomically."""
    import onnx

    wrapper = PixelClassifier(model).eval()
    example = (torch.full((2, 1, 48, 48), 128.0),)
    with atomic.atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's deprecation chatter
        torch.onnx.export(wrapper, example, str(tmp), input_names=["pixels"], output_names=["logits", "probabilities"],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=OPSET, dynamo=True,
                          external_data=False, verbose=False)
        graph = onnx.load(str(tmp))
        onnx.helper.set_model_props(graph, {
            "expressions": ",".join(EXPRESSIONS), "arch": cfg.arch, "input": "pixels float32 (N,1,48,48) in [0,255]",
            "equalize": str(cfg.augment.equalize).lower()})
        onnx.save(graph, str(tmp))
    return Path(path)


def session(path: str | Path, threads: int | None = None):
    """A CPU onnxruntime session (`threads` intra-op threads; None = onnxruntime's default)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def onnx_outputs(sess, pixels: np.ndarray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(logits, probabilities) of an ONNX session over float32 pixels, in batches."""
    logits, probs = [], []
    for i in range(0, len(pixels), batch_size):
        lo, pr = sess.run(["logits", "probabilities"], {"pixels": pixels[i : i + batch_size]})
        logits.append(lo)
        probs.append(pr)
    if not logits:
        return np.zeros((0, len(EXPRESSIONS)), np.float32), np.zeros((0, len(EXPRESSIONS)), np.float32)
    return np.concatenate(logits), np.concatenate(probs)


@torch.no_grad()
def parity(model: nn.Module, cfg: TrainConfig, sess, images_uint8: Tensor) -> dict[str, float]:
    """Largest absolute difference between PyTorch and the ONNX session, on logits and on probabilities."""
    from classifiers.augment import preprocess

    model.eval()
    logits = model(preprocess(images_uint8, cfg.augment.equalize))
    probs = torch.softmax(logits, dim=1)
    onnx_logits, onnx_probs = onnx_outputs(sess, onnx_pixels(images_uint8, cfg))
    return {"n": len(images_uint8), "max_abs_logits": float(np.abs(onnx_logits - logits.numpy()).max()),
            "max_abs_probabilities": float(np.abs(onnx_probs - probs.numpy()).max())}


def quant_ready(src: Path, dst: Path) -> Path:
    """onnxruntime's recommended step before quantising: shape inference and graph optimisation (BN folding)."""
    from onnxruntime.quantization import quant_pre_process

    quant_pre_process(str(src), str(dst))
    return dst


def quantize_dynamic_int8(src: Path, dst: Path) -> Path:
    """int8 weights, activations quantised at run time; `src` from quant_ready."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with atomic.atomic_path(dst) as tmp:
        quantize_dynamic(str(src), str(tmp), weight_type=QuantType.QInt8)
    return dst


def quantize_static_int8(src: Path, dst: Path, calibration_pixels: np.ndarray, batch_size: int = 64) -> Path:
    """QDQ int8 (per-tensor weights, uint8 activations) calibrated (min-max) on the given faces; `src` from quant_ready.

    Per-tensor, not per-channel: on our CNNs onnxruntime's per-channel QDQ kept fewer of the fp32 model's
    predictions (demo-face classifiers trained 6 / 12 / 20 epochs: 67 / 83 / 80% of argmaxes kept per
    channel vs 85 / 90 / 93% per tensor, onnxruntime 1.22 and 1.32 alike)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Faces(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter(calibration_pixels[i : i + batch_size] for i in range(0, len(calibration_pixels), batch_size))

        def get_next(self) -> dict | None:
            batch = next(self.batches, None)
            return None if batch is None else {"pixels": batch}

    softmax = [n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Softmax"]
    with atomic.atomic_path(dst) as tmp:
        quantize_static(str(src), str(tmp), Faces(), quant_format=QuantFormat.QDQ, per_channel=False,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        nodes_to_exclude=softmax)  # keep probabilities in float: they sum to 1
    return dst


def quantize_int8(src: Path, out_dir: Path, calibration_pixels: np.ndarray) -> dict[str, Path]:
    """Both int8 versions of an fp32 ONNX model, written to out_dir."""
    with tempfile.TemporaryDirectory() as scratch:
        ready = quant_ready(src, Path(scratch) / "ready.onnx")
        return {"int8_dynamic": quantize_dynamic_int8(ready, out_dir / VARIANTS[1]),
                "int8_static": quantize_static_int8(ready, out_dir / VARIANTS[2], calibration_pixels)}


def run_export_model(model_path: Path, out_dir: Path, data_dir: Path, metrics_path: Path | None,
                     quantize: bool = True, calibration_size: int = 512, parity_size: int = 256) -> dict:
    """Export, check parity, quantise, measure test accuracy of each variant; write the folder and metrics."""
    from rich.console import Console
    from rich.table import Table

    from classifiers.augment import preprocess
    from facedata.prepared import load_split
    from tools.predict import load_model

    if calibration_size < 1 or parity_size < 1:
        raise UserError("--calibration-size and --parity-size must be >= 1")
    model, cfg = load_model(model_path)
    test = val = None
    if quantize or (Path(data_dir) / "test.safetensors").exists():
        test = load_split(Path(data_dir) / "test.safetensors")
    if quantize:
        val = load_split(Path(data_dir) / "val.safetensors")
    if test is not None:
        parity_faces = test.images[:parity_size]
    else:  # no prepared data: parity on procedurally drawn faces
        from facedata.sources.demo_faces import draw_demo_faces

        parity_faces = draw_demo_faces(-(-parity_size // len(EXPRESSIONS)), seed=0)[0][:parity_size]

    metrics: dict = {"model": str(model_path), "arch": cfg.arch, "opset": OPSET, "input": "pixels float32 (N,1,48,48) in [0,255]"}
    with atomic.atomic_dir(out_dir) as tmp:
        fp32 = export_onnx(model, cfg, tmp / VARIANTS[0])
        metrics["parity"] = parity(model, cfg, session(fp32), parity_faces)
        worst = max(metrics["parity"]["max_abs_logits"], metrics["parity"]["max_abs_probabilities"])
        if worst > PARITY_ATOL:
            raise RuntimeError(f"ONNX export differs from PyTorch by {worst:.2e} > {PARITY_ATOL} ({metrics['parity']})")
        paths = {"fp32": fp32}
        if quantize:
            calibration = val.images[torch.randperm(len(val), generator=torch.Generator().manual_seed(0))[:calibration_size]]
            paths.update(quantize_int8(fp32, tmp, onnx_pixels(calibration, cfg)))
            metrics["calibration"] = {"split": "val", "n": len(calibration), "method": "minmax"}
        metrics["variants"] = {name: {"file": p.name, "bytes": p.stat().st_size} for name, p in paths.items()}
        if test is not None:
            with torch.no_grad():
                reference = model(preprocess(test.images, cfg.augment.equalize)).argmax(1).numpy()
            labels = test.labels.numpy()
            metrics["test"] = {"n": len(labels), "tta": "none",
                               "pytorch_accuracy": round(float((reference == labels).mean()), 5)}
            pixels = onnx_pixels(test.images, cfg)
            for name, p in paths.items():
                predicted = onnx_outputs(session(p), pixels)[1].argmax(1)
                metrics["variants"][name].update({
                    "test_accuracy": round(float((predicted == labels).mean()), 5),
                    "agreement_with_pytorch": round(float((predicted == reference).mean()), 5)})
            for name in paths:
                metrics["variants"][name]["accuracy_change_vs_fp32"] = round(
                    metrics["variants"][name]["test_accuracy"] - metrics["variants"]["fp32"]["test_accuracy"], 5)
    if metrics_path is not None:
        atomic.write_json(metrics_path, metrics)

    table = Table(title=f"ONNX export of {model_path} ({cfg.arch}) -> {out_dir}/")
    for column in ("file", "MiB", "test acc", "change", "agrees w/ PyTorch"):
        table.add_column(column, justify="left" if column == "file" else "right")
    for v in metrics["variants"].values():
        table.add_row(v["file"], f"{v['bytes'] / 2**20:.2f}", f"{v['test_accuracy']:.4f}" if "test_accuracy" in v else "-",
                      f"{v['accuracy_change_vs_fp32']:+.4f}" if "test_accuracy" in v else "-",
                      f"{v['agreement_with_pytorch']:.4f}" if "test_accuracy" in v else "-")
    console = Console()
    console.print(table)
    console.print(f"parity vs PyTorch on {metrics['parity']['n']} faces: max |diff| logits "
                  f"{metrics['parity']['max_abs_logits']:.1e}, probabilities {metrics['parity']['max_abs_probabilities']:.1e} "
                  f"(tolerance {PARITY_ATOL})", highlight=False)
    return metrics
