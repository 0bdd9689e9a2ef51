"""Speed of the fused-op backends, each beside the reference on the same inputs in the same run.

    .venv/bin/python -m pytest benchmarks/ --benchmark-group-by=param:case
Compare runs with pytest-benchmark's --benchmark-save / --benchmark-compare.
"""
import pytest
import torch

from fastmsfd import ops

# ResNet-18 layer1-3 shaped features to a 256x256 heatmap (the paper's setting), and EfficientNet-Lite0 stage2-4.
CASES = {
    "resnet18_b1": (1, [(64, 64, 64), (128, 32, 32), (256, 16, 16)]),
    "resnet18_b16": (16, [(64, 64, 64), (128, 32, 32), (256, 16, 16)]),
    "lite0_b8": (8, [(24, 64, 64), (40, 32, 32), (80, 16, 16)]),
}
BACKENDS = ["reference"] + [b for b in ("cpp",) if ops.backend_status("cpu")[b] is None]


def _feats(B, layers):
    g = torch.Generator().manual_seed(0)
    T = [torch.randn(B, c, h, w, generator=g) for c, h, w in layers]
    return T, [t + 0.1 * torch.randn(t.shape, generator=g) for t in T]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_anomaly_map(benchmark, case, backend):
    B, layers = CASES[case]
    T, S = _feats(B, layers)
    bytes_read = sum(t.numel() * t.element_size() * 2 for t in T)
    benchmark.extra_info["feature_MB"] = round(bytes_read / 1e6, 2)
    heat, _ = benchmark(ops.anomaly_map, T, S, (256, 256), backend=backend)
    assert heat.shape == (B, 256, 256)


@pytest.mark.parametrize("backend", ["reference"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_distill_loss_forward_backward(benchmark, case, backend):
    B, layers = CASES[case]
    T, S = _feats(B, layers)
    S = [s.requires_grad_() for s in S]

    def step():
        loss = ops.distill_loss(T, S, backend=backend)
        loss.backward()
        return loss

    assert torch.isfinite(benchmark(step))
