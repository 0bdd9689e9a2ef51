"""In-process runtimes for the exported inference graph (fastmsfd/export.py): ONNX Runtime and OpenVINO.

`Detector(runtime=...)`: "torch" (the PyTorch modules, channels_last, compiled ops), "onnxruntime", "openvino",
or "auto"; `Detector(precision=...)`: "float32", "bfloat16", "float16" or "auto". choose() turns "auto" into
the fastest correct path for this machine: its CPU's ISA (cpu_info()), the runtimes installed, and measured
accuracy evidence for lower precisions (docs/performance.md).
Every runtime returns the same heatmaps and scores up to float32 rounding (tests/test_export.py), and each may be
called from several threads at once (ONNX Runtime sessions are thread-safe; OpenVINO gets one request a thread).
"""
from __future__ import annotations

import functools
import platform
import threading
from dataclasses import dataclass

import numpy as np
import torch

RUNTIMES = ("auto", "torch", "onnxruntime", "openvino")
PRECISIONS = ("float32", "bfloat16", "float16", "auto")
RUNTIME_PRECISIONS = {"torch": ("float32", "bfloat16", "float16"), "onnxruntime": ("float32",),
                      "openvino": ("float32", "bfloat16")}
# CPU flags that decide the fastest correct path (Linux /proc/cpuinfo names).
ISA_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
# A lower precision may be chosen automatically only where it moved image and pixel AUROC by less than this on
# real parts, against float32 with the same fitted model.
MAX_AUROC_CHANGE = 0.005
# The evidence: (runtime, precision) -> {dataset: (change in image AUROC, change in pixel AUROC)} against torch
# float32, measured with scripts/experiments/precision_table.py (docs/performance.md, "Precision"). A pair that
# is missing, or moved either number by MAX_AUROC_CHANGE or more, is never chosen automatically.
PRECISION_EVIDENCE: dict[tuple[str, str], dict[str, tuple[float, float]]] = {
    ("torch", "bfloat16"): {"kolektorsdd": (-0.0012, +0.0019), "mtd": (-0.0012, -0.0004)},
    ("openvino", "bfloat16"): {"kolektorsdd": (+0.0000, +0.0020), "mtd": (-0.0001, -0.0011)},
}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    flags: frozenset  # the ISA_FLAGS this CPU has

    @property
    def native_bf16(self) -> bool:
        """bf16 arithmetic in hardware (AVX512_BF16 or AMX): bf16 then runs faster than float32, and OpenVINO
        defaults to it. Elsewhere bf16 is emulated and slower."""
        return bool({"avx512_bf16", "amx_bf16"} & self.flags)


@functools.lru_cache(maxsize=1)
def cpu_info() -> CpuInfo:
    """This machine's CPU model and the ISA flags that matter here (read once per process)."""
    model, flags = "", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:  # the first processor's entry
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "model name" and not model:
                    model = value.strip()
                elif key == "flags":
                    flags = set(value.split())
                    break
    except OSError:  # not Linux: torch's vector unit, and OpenVINO's word on bf16
        capability = torch.backends.cpu.get_cpu_capability()
        flags = {"avx2", "fma"} | ({"avx512f"} if capability.startswith("AVX512") else set()) \
            if capability.startswith("AVX") else set()
        if _openvino_has_bf16():
            flags.add("avx512_bf16")
    return CpuInfo(model or platform.processor() or platform.machine(),
                   frozenset(f for f in ISA_FLAGS if f in flags))


def _openvino_has_bf16() -> bool:
    try:
        import openvino as ov

        return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # not installed, or no CPU plugin: no evidence of native bf16
        return False


def precision_accepted(runtime: str, precision: str) -> bool:
    """True when measured evidence allows choosing (runtime, precision) automatically (float32 always)."""
    if precision == "float32":
        return True
    evidence = PRECISION_EVIDENCE.get((runtime, precision))
    return bool(evidence) and all(abs(d_image) < MAX_AUROC_CHANGE and abs(d_pixel) < MAX_AUROC_CHANGE
                                  for d_image, d_pixel in evidence.values())


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


@dataclass(frozen=True)
class Choice:
    runtime: str
    precision: str
    reason: str


def _fastest_float32(status: dict) -> tuple[str, str]:
    """The float32 runtime, from the measurements in docs/performance.md ("What auto picks"): ONNX Runtime leads
    by about 40% on AVX2-only CPUs; with AVX-512 the two were within 8% of each other, either way round."""
    for name in ("onnxruntime", "openvino"):
        if status[name] is None:
            return name, "the fastest installed float32 runtime"
    return "torch", "neither onnxruntime nor openvino installed"


def choose(runtime: str, device: torch.device, precision: str, cpu: CpuInfo | None = None,
           status: dict | None = None) -> Choice:
    """The runtime and precision to run, and why. "auto" in either chooses for this machine."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    device = torch.device(device)
    status = runtime_status() if status is None else status
    if runtime != "auto":
        if status[runtime]:
            raise RuntimeError(f"runtime {runtime!r} unavailable: {status[runtime]}")
        if runtime != "torch" and device.type != "cpu":
            raise ValueError(f"runtime {runtime!r} runs on the CPU; the detector is on {device}")
        if precision not in RUNTIME_PRECISIONS[runtime] + ("auto",):
            raise ValueError(f"runtime {runtime!r} runs precision {' or '.join(RUNTIME_PRECISIONS[runtime])}, "
                             f"not {precision}; use runtime='torch' for it")
    if device.type != "cpu":
        if precision == "auto":
            bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported() and precision_accepted("torch", "bfloat16")
            precision = "bfloat16" if bf16 else "float32"
        return Choice("torch", precision, f"device {device.type}: the torch runtime")
    cpu = cpu_info() if cpu is None else cpu
    why = []
    if precision == "auto":
        candidates = [r for r in ((runtime,) if runtime != "auto" else ("openvino", "torch")) if status[r] is None]
        bf16 = [r for r in candidates if precision_accepted(r, "bfloat16")]
        if cpu.native_bf16 and bf16:
            precision, runtime = "bfloat16", (runtime if runtime != "auto" else bf16[0])
            why.append(f"precision auto: native bf16 ({', '.join(sorted(cpu.flags & {'avx512_bf16', 'amx_bf16'}))})"
                       f" and bf16 on {runtime} kept AUROC within {MAX_AUROC_CHANGE}")
        else:
            precision = "float32"
            why.append("precision auto: " + ("no installed runtime whose bf16 kept AUROC" if cpu.native_bf16
                                             else "this CPU has no native bf16 (emulated bf16 is slower)"))
    if runtime == "auto":
        if precision == "float32":
            runtime, reason = _fastest_float32(status)
        elif precision == "bfloat16" and cpu.native_bf16 and status["openvino"] is None:
            runtime, reason = "openvino", "OpenVINO runs bf16 fastest on a CPU with native bf16"
        else:
            runtime, reason = "torch", f"precision {precision} runs in torch here"
        why.append("runtime auto: " + reason)
    return Choice(runtime, precision, "; ".join(why) or "requested")


class OnnxRuntimeRunner:
    def __init__(self, onnx_model: bytes, threads: int | None = None):
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(onnx_model, opts, providers=["CPUExecutionProvider"])

    def __call__(self, images_u8: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The graph's outputs (model.OUTPUT_NAMES), in order."""
        outputs = self.session.run(None, {"images": np.ascontiguousarray(images_u8.cpu().numpy())})
        return tuple(torch.from_numpy(o) for o in outputs)


OPENVINO_PRECISIONS = {"float32": "f32", "bfloat16": "bf16"}


def openvino_compile(onnx_model, precision: str, threads: int | None = None, **config):
    """An OpenVINO CPU model at an explicit precision ("float32" / "bfloat16"). OpenVINO's own default is bf16 on
    CPUs with native bf16 (AVX512_BF16, AMX) and f32 elsewhere, so a model compiled without the hint computes
    differently from one machine to the next: every compile in fastmsfd (tests and scripts too) goes through
    here. onnx_model: ONNX bytes or a file path."""
    import openvino as ov

    core = ov.Core()
    model = core.read_model(onnx_model) if not isinstance(onnx_model, bytes) else \
        core.read_model(model=onnx_model, weights=b"")
    config = {"INFERENCE_PRECISION_HINT": OPENVINO_PRECISIONS[precision],
              "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), **config}
    return core.compile_model(model, "CPU", config)


class OpenVinoRunner:
    def __init__(self, onnx_model: bytes, threads: int | None = None, precision: str = "float32"):
        self.compiled = openvino_compile(onnx_model, precision, threads, PERFORMANCE_HINT="LATENCY")
        self._local = threading.local()  # an InferRequest is not thread-safe: one per calling thread

    def __call__(self, images_u8: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The graph's outputs (model.OUTPUT_NAMES), in order."""
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        out = request.infer({"images": np.ascontiguousarray(images_u8.cpu().numpy())})
        return tuple(torch.from_numpy(np.array(out[o])) for o in self.compiled.outputs)


def build_runner(name: str, onnx_model: bytes, precision: str = "float32"):
    if name == "onnxruntime":
        return OnnxRuntimeRunner(onnx_model)
    if name == "openvino":
        return OpenVinoRunner(onnx_model, precision=precision)
    raise ValueError(f"no runner for runtime {name!r}")
