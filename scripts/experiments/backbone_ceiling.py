"""The speed ceiling of MSFD on this machine: one truncated backbone (up to the deepest layer the detector uses),
exported alone to ONNX and run in ONNX Runtime and OpenVINO at batch 8. MSFD runs two such networks (teacher and
student) per image, so its end-to-end throughput cannot exceed half of this.

    .venv/bin/python scripts/experiments/backbone_ceiling.py [--backbone resnet18 efficientnet_lite0] [--image-size 256]
"""
from __future__ import annotations

import argparse
import io
import warnings

import numpy as np
import torch


def images_per_second(run, x) -> float:
    from fastmsfd.bench import _median_seconds  # the timing `fastmsfd bench` uses

    return len(x) / _median_seconds(lambda: run(x), 10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", nargs="+", default=["resnet18", "efficientnet_lite0"])
    ap.add_argument("--image-size", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args()
    warnings.filterwarnings("ignore")
    import onnx
    import onnxruntime as ort

    from fastmsfd import Detector
    from fastmsfd.backbones import build_backbone, default_layers
    from fastmsfd.export import OPSET, onnx_bytes
    from fastmsfd.onnx_passes import fold_pads
    from fastmsfd.runtimes import build_runner

    threads = torch.get_num_threads()
    print(f"{args.image_size}x{args.image_size}, batch {args.batch}, {threads} threads, float32, random weights\n")
    print("| backbone (to its deepest default layer) | runtime | one network images/s | half of it (two networks) | "
          "the detector's exported graph images/s |")
    print("|---|---|---|---|---|")
    x = np.random.default_rng(0).standard_normal((args.batch, 3, args.image_size, args.image_size), np.float32)
    for name in args.backbone:
        net = build_backbone(name, tuple(default_layers(name))).eval()
        buf = io.BytesIO()
        with torch.no_grad():
            torch.onnx.export(net, torch.from_numpy(x), buf, input_names=["x"], dynamo=False, opset_version=OPSET,
                              do_constant_folding=True)
        model = onnx.load_from_string(buf.getvalue())
        fold_pads(model)  # as the detector's export does: SAME padding inside the convolutions
        graph = model.SerializeToString()
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1  # as fastmsfd.runtimes does
        session = ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        runs = {"onnxruntime": lambda a: session.run(None, {"x": a})}
        try:
            from fastmsfd.runtimes import openvino_compile

            compiled = openvino_compile(graph, "float32", threads, PERFORMANCE_HINT="LATENCY")
            request = compiled.create_infer_request()
            runs["openvino"] = lambda a: request.infer({0: a})
        except ImportError:
            pass
        # the whole detector as it ships (teacher, student, maps, score), measured the same way beside it
        det = Detector(backbone=name, image_size=args.image_size, weights="random").eval()
        full = {r: build_runner(r, onnx_bytes(det)) for r in runs}
        u8 = torch.from_numpy((np.abs(x) * 60).clip(0, 255).astype(np.uint8))
        for runtime, run in runs.items():
            one = images_per_second(run, x)
            msfd = images_per_second(full[runtime], u8)
            print(f"| {name} | {runtime} | {one:.1f} | {one / 2:.1f} | {msfd:.1f} |", flush=True)


if __name__ == "__main__":
    main()
