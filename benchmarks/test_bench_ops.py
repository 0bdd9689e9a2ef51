"""Speed of the fused-op backends, each beside the reference on the same inputs in the same run.

    .venv/bin/python -m pytest benchmarks/ --benchmark-group-by=param:case
Compare runs with pytest-benchmark's --benchmark-save / --benchmark-compare. Each case records the feature bytes
it reads (extra_info feature_MB): divide by the mean time for the achieved bandwidth. On a CUDA machine the cases
run on the GPU (backends cuda and triton beside the reference).
"""
import pytest
import torch

from fastmsfd import ops

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# ResNet-18 layer1-3 shaped features to a 256x256 heatmap (the paper's setting), and EfficientNet-Lite0 stage2-4.
CASES = {
    "resnet18_b1": (1, [(64, 64, 64), (128, 32, 32), (256, 16, 16)]),
    "resnet18_b16": (16, [(64, 64, 64), (128, 32, 32), (256, 16, 16)]),
    "lite0_b8": (8, [(24, 64, 64), (40, 32, 32), (80, 16, 16)]),
}
if DEVICE == "cuda":
    CASES["resnet18_b64"] = (64, [(64, 64, 64), (128, 32, 32), (256, 16, 16)])
STATUS = ops.backend_status(DEVICE)
BACKENDS = ["reference", "cpp", "cuda", "triton"]
if DEVICE == "cpu" and __import__("os").environ.get("TRITON_INTERPRET") == "1":
    BACKENDS.remove("triton")  # the interpreter's speed says nothing about the kernel's


def _skip_unavailable(backend):
    if STATUS[backend] is not None:
        pytest.skip(f"{backend}: {STATUS[backend]}")


def _feats(B, layers):
    g = torch.Generator().manual_seed(0)
    T = [torch.randn(B, c, h, w, generator=g) for c, h, w in layers]
    S = [t + 0.1 * torch.randn(t.shape, generator=g) for t in T]
    return [t.to(DEVICE) for t in T], [s.to(DEVICE) for s in S]


def _sync(x):
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    return x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_anomaly_map(benchmark, case, backend):
    _skip_unavailable(backend)
    B, layers = CASES[case]
    T, S = _feats(B, layers)
    benchmark.extra_info["feature_MB"] = round(sum(t.numel() * t.element_size() * 2 for t in T) / 1e6, 2)
    heat, _ = benchmark(lambda: _sync(ops.anomaly_map(T, S, (256, 256), backend=backend)))
    assert heat.shape == (B, 256, 256)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_distill_loss_forward_backward(benchmark, case, backend):
    _skip_unavailable(backend)
    B, layers = CASES[case]
    T, S = _feats(B, layers)
    S = [s.requires_grad_() for s in S]
    # forward reads T and S, backward reads them again and writes dS
    benchmark.extra_info["feature_MB"] = round(sum(t.numel() * t.element_size() * 5 for t in T) / 1e6, 2)

    def step():
        loss = ops.distill_loss(T, S, backend=backend)
        loss.backward()
        return _sync(loss)

    assert torch.isfinite(benchmark(step))
