"""GPU readiness checked without a GPU, and the runtime/precision choice on every x86 CPU.

What a GPU would reveal first is tested here by other means: the ahead-of-time compile specs match the kernels
(scripts/compile_triton.py compiles them in CI), the dispatcher traces under torch.compile(fullgraph=True), every
launch names its device, torchrun ranks bind to their own GPU, float16 training is refused. The automatic choice is
tested over simulated CPUs, so no test depends on the instruction set of the machine it runs on.
"""
import ast
import importlib.util
import inspect
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from fastmsfd import Detector, ops
from fastmsfd import runtimes as rt
from fastmsfd.distributed import ddp_kwargs, local_moments, rank_device
from fastmsfd.kernels import anomaly_map as triton_map
from fastmsfd.kernels import distance as triton_distance

ROOT = Path(__file__).resolve().parents[1]
AVX2 = rt.CpuInfo("an AVX2 CPU", frozenset({"avx2", "fma"}))
AVX512 = rt.CpuInfo("an AVX-512 CPU", frozenset({"avx2", "fma", "avx512f"}))
AVX512_BF16 = rt.CpuInfo("an AVX-512 CPU with bf16", frozenset({"avx2", "fma", "avx512f", "avx512_bf16"}))
AMX = rt.CpuInfo("a CPU with AMX", frozenset({"avx2", "fma", "avx512f", "amx_tile", "amx_bf16"}))
CPUS = [AVX2, AVX512, AVX512_BF16, AMX]
ALL = {"torch": None, "onnxruntime": None, "openvino": None}
STATUSES = [ALL, dict(ALL, openvino="not installed"), dict(ALL, onnxruntime="not installed"),
            dict(ALL, onnxruntime="not installed", openvino="not installed")]


def _compile_triton_script():
    spec = importlib.util.spec_from_file_location("compile_triton", ROOT / "scripts" / "compile_triton.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ---- A. GPU paths --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module", [triton_distance, triton_map], ids=["distance", "anomaly_map"])
def test_aot_specs_name_every_argument_of_their_kernel(module):
    """A spec that drifts from its kernel's signature would compile something the launcher never runs."""
    specs = list(module.aot_specs())
    assert specs
    for fn, label, signature, constexprs in specs:
        assert list(signature) == fn.arg_names, label
        assert {k for k, v in signature.items() if v == "constexpr"} == set(constexprs), label


def test_compile_script_finds_every_kernel_file_and_flags_uncovered_functions():
    script = _compile_triton_script()
    files = {str(p) for p in script.kernel_files()}
    assert {"kernels/distance.py", "kernels/anomaly_map.py"} <= files

    srcs = {"_kernel": "def _kernel(x):\n    y = _helper(x)\n", "_helper": "def _helper(x):\n    return _inner(x)\n",
            "_inner": "def _inner(x):\n    return x\n", "_orphan": "def _orphan(x):\n    return x\n"}
    assert script.covered_helpers(["_kernel"], srcs) == {"_helper", "_inner"}  # _orphan: reported NOT COVERED
    # the real modules: every jitted function is an entry in aot_specs() or reached from one
    for module in (triton_distance, triton_map):
        functions = script.jit_functions(module)
        entries = sorted({fn.fn.__name__ for fn, *_ in module.aot_specs()})
        assert set(functions) == set(entries) | script.covered_helpers(entries, script.sources(functions))


def test_kernels_read_only_constexpr_globals():
    """Compiling for a GPU, Triton refuses a plain-float module global inside @triton.jit code (the interpreter
    does not): every module global a kernel names must be a tl.constexpr."""
    for module in (triton_distance, triton_map):
        for name, fn in _compile_triton_script().jit_functions(module).items():
            tree = ast.parse(textwrap.dedent(inspect.getsource(fn.fn)))
            names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
            for word in names - set(fn.arg_names):
                value = getattr(module, word, None)
                if isinstance(value, (bool, int, float, str)):
                    pytest.fail(f"{name} reads the plain global {word} = {value!r}; make it tl.constexpr")


def test_launches_run_under_the_tensors_device(monkeypatch):
    entered = []

    class Guard:
        def __init__(self, device):
            entered.append(device)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(torch.cuda, "device", Guard)

    class OnSecondGpu:
        device = torch.device("cuda", 1)

    with triton_distance.device_guard(OnSecondGpu()):
        pass
    assert entered == [torch.device("cuda", 1)]
    with triton_distance.device_guard(torch.zeros(1)):  # CPU tensors (the interpreter): no CUDA call
        pass
    assert entered == [torch.device("cuda", 1)]


def test_ops_backend_is_validated_and_reaches_training(monkeypatch):
    with pytest.raises(ValueError, match="ops_backend"):
        Detector(image_size=32, weights="random", ops_backend="tpu")
    used = []
    real = ops.distill_loss
    monkeypatch.setattr(ops, "distill_loss", lambda *a, **k: (used.append(k.get("backend")), real(*a, **k))[1])
    Detector(image_size=32, weights="random", ops_backend="reference").fit(
        torch.randint(0, 255, (6, 3, 32, 32), dtype=torch.uint8), epochs=1, batch_size=2, progress=False)
    assert used and set(used) == {"reference"}


def test_float64_runs_on_the_reference_and_says_so():
    t, s = [torch.randn(1, 4, 3, 3, dtype=torch.float64)], [torch.randn(1, 4, 3, 3, dtype=torch.float64)]
    heat, _ = ops.anomaly_map(t, s, (6, 6), backend="auto")
    assert heat.dtype == torch.float64 and ops.last_backend()[0] == "reference"
    assert any("float64" in why for why in ops.last_backend()[1])


def test_backend_choice_traces_with_fullgraph():
    """Availability is resolved outside traced code: Dynamo cannot call the extension's pybind functions."""
    def pick(x):
        name, _ = ops.select_backend("auto", torch.device("cuda"), "anomaly_map")
        return x + len(name)

    x = torch.zeros(2)
    assert torch.equal(torch.compile(pick, fullgraph=True)(x), pick(x))

    def heat(t, s):
        return ops.anomaly_map(t, s, (24, 20), backend="auto")[0]

    t, s = [torch.randn(2, 8, 6, 5)], [torch.randn(2, 8, 6, 5)]
    torch.testing.assert_close(torch.compile(heat, fullgraph=True)(t, s), heat(t, s), rtol=1e-5, atol=1e-5)


def test_torchrun_ranks_bind_to_their_own_gpu(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert rank_device(torch.device("cuda")) == torch.device("cuda", 3)
    assert rank_device(torch.device("cuda", 0)) == torch.device("cuda", 3)
    assert rank_device(torch.device("cpu")) == torch.device("cpu")
    assert ddp_kwargs(torch.device("cuda", 3)) == {"device_ids": [3], "output_device": 3}
    assert ddp_kwargs(torch.device("cpu")) == {}
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert rank_device(torch.device("cuda", 0)) == torch.device("cuda", 0)  # not under torchrun: as given


def test_sync_batchnorm_statistics_stay_on_the_features_device():
    x = torch.empty(2, 3, 4, 4, device="meta")  # any non-CPU device: a CPU count tensor would not concatenate
    stats = local_moments(x)
    assert stats.device == x.device and stats.shape == (7,) and stats.dtype == torch.float64
    y = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    got = local_moments(y)
    torch.testing.assert_close(got[:3], y.double().sum((0, 2, 3)))
    torch.testing.assert_close(got[3:6], y.double().pow(2).sum((0, 2, 3)))
    assert got[6].item() == 8


def test_float16_fit_is_refused_and_float16_inference_is_loadable(tmp_path):
    images = torch.randint(0, 255, (4, 3, 32, 32), dtype=torch.uint8)
    det = Detector(image_size=32, weights="random", precision="float16")
    with pytest.raises(ValueError, match="loss scaling"):
        det.fit(images, epochs=1, progress=False)
    Detector(image_size=32, weights="random").save(tmp_path / "m.fastmsfd")
    loaded = Detector.load(tmp_path / "m.fastmsfd", runtime="torch", precision="float16")
    assert loaded.precision == "float16" and loaded.model.autocast().fast_dtype == torch.float16
    with pytest.raises(ValueError, match="precision"):
        Detector.load(tmp_path / "m.fastmsfd", precision="float8")


# ---- B. every CPU --------------------------------------------------------------------------------------------

def test_cpu_info_reads_this_machine():
    cpu = rt.cpu_info()
    assert cpu.model and cpu.flags <= set(rt.ISA_FLAGS)
    assert cpu.native_bf16 == bool({"avx512_bf16", "amx_bf16"} & cpu.flags)


@pytest.mark.parametrize("openvino_bf16", [True, False])
def test_cpu_info_without_proc_cpuinfo_asks_openvino(monkeypatch, openvino_bf16):
    def no_file(*args, **kwargs):
        raise OSError("no /proc/cpuinfo here")

    monkeypatch.setattr(rt, "open", no_file, raising=False)  # shadows the builtin inside runtimes only
    monkeypatch.setattr(rt, "_openvino_has_bf16", lambda: openvino_bf16)
    cpu = rt.cpu_info.__wrapped__()
    assert cpu.model and cpu.native_bf16 == openvino_bf16


@pytest.mark.parametrize("cpu", CPUS, ids=lambda c: c.model)
@pytest.mark.parametrize("status", STATUSES, ids=["all", "no-openvino", "no-onnxruntime", "torch-only"])
@pytest.mark.parametrize("evidence", ["measured", "rejects-bf16", "accepts-bf16", "none"])
def test_auto_never_picks_a_precision_the_evidence_rejects(cpu, status, evidence, monkeypatch):
    table = {"measured": rt.PRECISION_EVIDENCE, "none": {},
             "rejects-bf16": {(r, "bfloat16"): {"kolektorsdd": (0.0, 0.0), "mtd": (-0.006, 0.0)}
                              for r in ("torch", "openvino")},
             "accepts-bf16": {(r, "bfloat16"): {"kolektorsdd": (0.001, -0.002), "mtd": (0.0, 0.004)}
                              for r in ("torch", "openvino")}}[evidence]
    monkeypatch.setattr(rt, "PRECISION_EVIDENCE", table)
    for runtime in ("auto", "torch", "openvino"):
        if status[runtime if runtime != "auto" else "torch"]:
            continue
        choice = rt.choose(runtime, torch.device("cpu"), "auto", cpu=cpu, status=status)
        assert status[choice.runtime] is None
        assert choice.precision == "float32" or rt.precision_accepted(choice.runtime, choice.precision), choice
        if choice.precision != "float32":
            assert cpu.native_bf16, "bf16 chosen on a CPU that only emulates it"
        if evidence == "rejects-bf16" or not cpu.native_bf16:
            assert choice.precision == "float32", choice
        if evidence == "accepts-bf16" and cpu.native_bf16 and runtime == "auto":
            assert choice.precision == "bfloat16"
            assert choice.runtime == ("openvino" if status["openvino"] is None else "torch")


@pytest.mark.parametrize("cpu", CPUS, ids=lambda c: c.model)
def test_auto_runtime_for_float32_follows_the_measured_rule(cpu):
    choice = rt.choose("auto", torch.device("cpu"), "float32", cpu=cpu, status=ALL)
    assert choice.precision == "float32"
    assert choice.runtime == "onnxruntime", choice
    assert rt.choose("auto", torch.device("cpu"), "float32", cpu=cpu, status=STATUSES[2]).runtime == "openvino"
    assert rt.choose("auto", torch.device("cpu"), "float32", cpu=cpu, status=STATUSES[3]).runtime == "torch"
    with pytest.raises(ValueError, match="onnxruntime"):
        rt.choose("onnxruntime", torch.device("cpu"), "bfloat16", cpu=cpu, status=ALL)


def test_openvino_is_always_compiled_at_an_explicit_precision(tmp_path):
    """OpenVINO's default is bf16 on CPUs with native bf16: no file compiles a model without naming one."""
    offenders = []
    for folder in ("fastmsfd", "tests", "scripts", "benchmarks"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name not in ("runtimes.py", "test_portability.py") and ".compile_model(" in path.read_text():
                offenders.append(str(path.relative_to(ROOT)))
    assert not offenders, f"use fastmsfd.runtimes.openvino_compile: {offenders}"
    if rt.runtime_status()["openvino"] is not None:
        pytest.skip("openvino not installed")
    det = Detector(image_size=32, weights="random").eval()
    from fastmsfd.export import onnx_bytes

    compiled = rt.openvino_compile(onnx_bytes(det), "float32", threads=1)
    assert str(compiled.get_property("INFERENCE_PRECISION_HINT")).lower() in ("f32", "<type: 'float32'>")


def test_bench_table_names_the_cpu():
    from fastmsfd.bench import markdown

    result = dict(backbone="b", image_size=8, batch=2, threads=2, torch="t", weights="random", cpu="X CPU",
                  isa=["avx2", "avx512f"], native_bf16=False,
                  rows=[dict(pipeline="naive", runtime="torch-eager", precision="float32", latency_ms=1.0,
                             throughput=2.0, speedup_throughput=1.0, throughput_with_decode=1.0,
                             speedup_with_decode=1.0),
                        dict(pipeline="predict(arrays)", runtime="onnxruntime", precision="float32",
                             latency_ms=None, throughput=9.0, graph_throughput=10.0, of_graph=0.9,
                             throughput_with_decode=None)])
    text = markdown(result)
    assert "X CPU" in text and "avx512f" in text and "native bf16: no" in text and "0.9 of the graph" in text


def test_predict_on_arrays_matches_tensor_input_in_order():
    """The pipelined input path (conversion of batch k+1 while batch k infers, the uint8 fast path at the
    network's size) gives exactly the results of the plain tensor path, in input order."""
    det = Detector(image_size=32, weights="random", runtime="torch").eval()
    rng = np.random.default_rng(0)
    at_size = [rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for _ in range(5)]
    larger = [rng.integers(0, 256, (41, 37, 3), dtype=np.uint8) for _ in range(3)]
    want = det.predict(torch.from_numpy(np.stack(at_size)).permute(0, 3, 1, 2).float() / 255, batch_size=2)
    got = det.predict(at_size, batch_size=2)
    torch.testing.assert_close(got.heatmaps, want.heatmaps, rtol=0, atol=0)
    mixed = det.predict(at_size[:2] + larger + at_size[2:], batch_size=3)
    assert mixed.sizes == [(32, 32)] * 2 + [(41, 37)] * 3 + [(32, 32)] * 3
    # the global branch's matrix product rounds differently for other batch sizes (a few 1e-7)
    torch.testing.assert_close(mixed.scores[[0, 1, 5, 6, 7]], want.scores, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match=r"images\[5\]: expected"):  # the index in the whole input
        det.predict(at_size + [np.zeros((32, 32, 2), np.uint8)], batch_size=2)
