"""In-process runtimes for the exported inference graph (fastmsfd/export.py): ONNX Runtime and OpenVINO.

`Detector(runtime=...)`: "torch" (the PyTorch modules, channels_last, compiled ops), "onnxruntime", "openvino",
or "auto": on a CPU with float32 precision the fastest one installed (measured: docs/performance.md), else torch.
Every runtime returns the same heatmaps and scores up to float32 rounding (tests/test_export.py), and each may be
called from several threads at once (ONNX Runtime sessions are thread-safe; OpenVINO gets one request a thread).
"""
from __future__ import annotations

import threading

import numpy as np
import torch

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
# "auto" preference on CPU, fastest first (docs/performance.md has the measurement behind the order).
AUTO_ORDER = ("onnxruntime", "openvino")


def runtime_status() -> dict[str, str | None]:
    """{runtime: None if usable here, else why not}."""
    status: dict[str, str | None] = {"torch": None}
    for name, module in (("onnxruntime", "onnxruntime"), ("openvino", "openvino")):
        try:
            __import__(module)
            status[name] = None
        except ImportError as exc:
            status[name] = f"{module} not installed ({exc}); pip install {module}"
    return status


def resolve(runtime: str, device: torch.device, precision: str) -> tuple[str, str]:
    """The runtime to use and why."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    status = runtime_status()
    if runtime != "auto":
        if status[runtime]:
            raise RuntimeError(f"runtime {runtime!r} unavailable: {status[runtime]}")
        if runtime != "torch" and device.type != "cpu":
            raise ValueError(f"runtime {runtime!r} runs on the CPU; the detector is on {device}")
        return runtime, "requested"
    if device.type != "cpu":
        return "torch", f"auto: device {device.type}"
    if precision != "float32":
        return "torch", f"auto: precision {precision} (the exported runtimes run float32)"
    for name in AUTO_ORDER:
        if status[name] is None:
            return name, "auto: fastest installed on CPU"
    return "torch", "auto: neither onnxruntime nor openvino installed"


class OnnxRuntimeRunner:
    def __init__(self, onnx_model: bytes, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(onnx_model, opts, providers=["CPUExecutionProvider"])

    def __call__(self, images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        heat, score = self.session.run(None, {"images": np.ascontiguousarray(images_u8.cpu().numpy())})
        return torch.from_numpy(heat), torch.from_numpy(score)


class OpenVinoRunner:
    def __init__(self, onnx_model: bytes, threads: int | None = None, precision: str = "f32"):
        import openvino as ov

        core = ov.Core()
        model = core.read_model(model=onnx_model, weights=b"")
        config = {"INFERENCE_PRECISION_HINT": precision, "PERFORMANCE_HINT": "LATENCY",
                  "INFERENCE_NUM_THREADS": threads or torch.get_num_threads()}
        self.compiled = core.compile_model(model, "CPU", config)
        self._local = threading.local()  # an InferRequest is not thread-safe: one per calling thread

    def __call__(self, images_u8: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        out = request.infer({"images": np.ascontiguousarray(images_u8.cpu().numpy())})
        heat, score = (np.array(out[self.compiled.output(i)]) for i in range(2))
        return torch.from_numpy(heat), torch.from_numpy(score)


def build_runner(name: str, onnx_model: bytes, precision: str = "float32"):
    if name == "onnxruntime":
        return OnnxRuntimeRunner(onnx_model)
    if name == "openvino":
        return OpenVinoRunner(onnx_model, precision="bf16" if precision == "bfloat16" else "f32")
    raise ValueError(f"no runner for runtime {name!r}")
