"""int8 post-training quantisation of the exported graph: accuracy against float32 and speed (inference issue:
a lower precision becomes a default only where image and pixel AUROC move by less than 0.005).

    .venv/bin/python scripts/experiments/int8_check.py MODEL.fastmsfd CATEGORY_FOLDER [--calibration 64] [--per-channel]
    .venv/bin/python scripts/experiments/int8_check.py --speed-only resnet18      # random weights: speed, no accuracy

Quantises the teacher's and the student's Conv/Add/Relu/Clip/MaxPool nodes with ONNX Runtime's static QDQ
quantiser (uint8 activations, int8 weights), calibrated on the category's train/good images (normal images
only); the distances, up-sampling and score stay float32. Runs the float32 and the int8 graph in ONNX Runtime
and OpenVINO on the test images and prints image/pixel AUROC, AUPRO and images/s (batch 8, 2 threads).
Not a library feature: docs/performance.md says why.
"""
from __future__ import annotations

import argparse
import tempfile
import warnings
from pathlib import Path

import numpy as np

QUANTISED_OPS = ("Conv", "Add", "Relu", "Clip", "MaxPool")


def quantise(f32_path: Path, out_path: Path, calibration: np.ndarray, per_channel: bool) -> None:
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_static,
    )

    pre = out_path.with_suffix(".pre.onnx")
    quant_pre_process(str(f32_path), str(pre), skip_symbolic_shape=True)
    # only the two networks: the distance maths works on small teacher-student differences
    nodes = [n.name for n in onnx.load(str(pre)).graph.node
             if n.name.startswith(("/teacher/", "/student/")) and n.op_type in QUANTISED_OPS]

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter([{"images": calibration[i:i + 8]} for i in range(0, len(calibration), 8)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(pre), str(out_path), Reader(), quant_format=QuantFormat.QDQ, nodes_to_quantize=nodes,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=per_channel)


def runners(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    yield "onnxruntime", lambda x: session.run(None, {"images": x})
    try:
        import openvino  # noqa: F401
    except ImportError:
        return
    from fastmsfd.runtimes import openvino_compile

    compiled = openvino_compile(str(path), "float32", threads=2)  # int8 where quantised, float32 elsewhere
    request = compiled.create_infer_request()

    def run_ov(x):
        out = request.infer({"images": x})
        return np.array(out[compiled.output(0)]), np.array(out[compiled.output(1)])
    yield "openvino", run_ov


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="a .fastmsfd file, or a backbone name with --speed-only")
    ap.add_argument("category", nargs="?")
    ap.add_argument("--calibration", type=int, default=64, help="normal training images used to calibrate")
    ap.add_argument("--per-channel", action="store_true", help="per-channel weight scales")
    ap.add_argument("--speed-only", action="store_true")
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    from fastmsfd import Detector, metrics
    from fastmsfd.bench import _median_seconds
    from fastmsfd.data import load_resized
    from fastmsfd.datasets import mvtec_category
    from fastmsfd.evaluate import mask_at, read_sample_mask
    from fastmsfd.export import onnx_bytes

    if args.speed_only:
        det = Detector(backbone=args.model, weights="random").eval()
        rng = np.random.default_rng(0)
        calibration = test = rng.integers(0, 256, (16, 3, *det.input_hw), dtype=np.uint8)
        samples = []
    else:
        det = Detector.load(args.model, runtime="torch").eval()
        root = Path(args.category)
        calibration = load_resized(sorted((root / "train" / "good").iterdir())[:args.calibration],
                                   det.input_hw, False).numpy()
        samples, S = mvtec_category(root).test, det.input_hw
        test = load_resized([s.path for s in samples], S, False).numpy()
        masks = np.stack([mask_at(read_sample_mask(s), (S, S)) for s in samples])
        labels = np.array([s.label for s in samples])
    print("| graph | runtime | image AUROC | pixel AUROC | AUPRO | images/s |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        f32, q8 = Path(tmp) / "float32.onnx", Path(tmp) / "int8.onnx"
        f32.write_bytes(onnx_bytes(det))
        quantise(f32, q8, calibration, args.per_channel)
        for name, path in (("float32", f32), ("int8" + (" per-channel" if args.per_channel else ""), q8)):
            for runtime, run in runners(path):
                acc = "- | - | -"
                if samples:
                    out = [run(test[i:i + 8]) for i in range(0, len(test), 8)]
                    heat = np.concatenate([np.asarray(h) for h, _ in out])
                    score = np.concatenate([np.asarray(s) for _, s in out])
                    acc = (f"{metrics.image_auroc(labels, score):.4f} | {metrics.pixel_auroc(masks, heat):.4f} | "
                           f"{metrics.aupro(masks, heat):.4f}")
                images_per_s = 8 / _median_seconds(lambda: run(test[:8]), 5)
                print(f"| {name} | {runtime} | {acc} | {images_per_s:.1f} |", flush=True)


if __name__ == "__main__":
    main()
