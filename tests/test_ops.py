"""fastmsfd.ops: argument validation, backend selection with reasons, NaN behaviour, and every available
backend against the reference on fresh random inputs over many shapes and dtypes."""
import math

import pytest
import torch

from fastmsfd import ops
from fastmsfd.ops import reference

CPP = ops.backend_status("cpu")["cpp"] is None


def _pair(B, C, h, w, dtype=torch.float32, gen=None):
    t = torch.randn(B, C, h, w, generator=gen).to(dtype)
    return t, torch.randn(B, C, h, w, generator=gen).to(dtype)


def test_auto_on_cpu_uses_an_available_backend_and_says_why_others_were_skipped():
    t, s = _pair(1, 4, 2, 2)
    ops.anomaly_map([t], [s], (8, 8))
    name, skipped = ops.last_backend()
    assert name == ("cpp" if CPP else "reference")
    if not CPP:
        assert any(r.startswith("cpp:") for r in skipped)


def test_backend_status_gives_reasons():
    status = ops.backend_status("cpu")
    assert status["reference"] is None
    assert isinstance(status["cuda"], str) and status["cuda"]  # no CUDA here: a reason, not None


def test_unavailable_backend_raises_with_reason():
    t, s = _pair(1, 4, 2, 2)
    with pytest.raises(RuntimeError, match="cuda"):
        ops.anomaly_map([t], [s], (8, 8), backend="cuda")
    with pytest.raises(ValueError, match="backend"):
        ops.anomaly_map([t], [s], (8, 8), backend="magic")


@pytest.mark.parametrize("bad,match", [
    (lambda t, s: ([t], [s[:, :2]]), "same"),
    (lambda t, s: ([t], [s.half()]), "dtype"),
    (lambda t, s: ([t], []), "number"),
    (lambda t, s: ([t] * 9, [s] * 9), "at most 8 layers"),
    (lambda t, s: ([t.long()], [s.long()]), "dtype"),
    (lambda t, s: ([t[0]], [s[0]]), "same"),
    (lambda t, s: ([t, t[:1]], [s, s[:1]]), "batch"),
    (lambda t, s: (t, s), "lists"),
    (lambda t, s: ([t[:0]], [s[:0]]), "empty"),
])
def test_bad_features_raise_value_error(bad, match):
    t, s = _pair(2, 4, 3, 3)
    T, S = bad(t, s)
    with pytest.raises(ValueError, match=match):
        ops.anomaly_map(T, S, (8, 8))
    with pytest.raises(ValueError, match=match):
        ops.distill_loss(T, S)


@pytest.mark.parametrize("kw,match", [
    (dict(layer_weights=[1.0, 2.0]), "one value per layer"), (dict(layer_weights=[-1.0]), "weight"),
    (dict(sigmas=[0.0]), "sigma"), (dict(aggregate="median"), "aggregate"), (dict(topk=0.0), "topk"),
    (dict(alpha=float("nan")), "alpha"), (dict(out_size=(0, 4)), "out_size")])
def test_bad_parameters_raise_value_error(kw, match):
    t, s = _pair(1, 4, 3, 3)
    kw = dict(kw)
    out = kw.pop("out_size", (8, 8))
    with pytest.raises(ValueError, match=match):
        ops.anomaly_map([t], [s], out, **kw)


@pytest.mark.parametrize("backend", ["reference"] + (["cpp"] if CPP else []))
def test_nan_feature_poisons_only_its_own_image(backend):
    t, s = _pair(3, 8, 4, 4)
    t[1, 2, 1, 3] = float("nan")
    heat, score = ops.anomaly_map([t], [s], (16, 16), backend=backend)
    assert math.isnan(score[1].item())
    assert torch.isfinite(score[[0, 2]]).all() and torch.isfinite(heat[[0, 2]]).all()
    t[1, 2, 1, 3] = float("inf")
    _, score = ops.anomaly_map([t], [s], (16, 16), backend=backend)
    assert not math.isfinite(score[1].item()) and torch.isfinite(score[[0, 2]]).all()


# ---- compiled CPU backend vs the reference -----------------------------------------------------------------

SHAPES = [[(1, 1, 1, 1)], [(2, 3, 5, 7)], [(5, 33, 9, 4), (5, 17, 3, 2)], [(1, 64, 16, 16), (1, 128, 8, 8),
                                                                             (1, 256, 4, 4)],
          [(3, 1000, 2, 3)], [(2, 5, 40, 40)], [(1, 7, 33, 31), (1, 9, 17, 16), (1, 3, 9, 8), (1, 2, 5, 4)]]


def _tol(dtype):
    # float32: 1e-5 relative; half types: inputs are rounded identically for both paths and both accumulate in
    # float32, so only summation order differs.
    return dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(not CPP, reason="fastmsfd._C not built")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("shapes", SHAPES)
def test_cpp_distance_matches_reference(dtype, shapes):
    from fastmsfd.ops import compiled

    for B, C, h, w in shapes:
        t, s = _pair(B, C, h, w, dtype)
        got = compiled.distance_map(t, s, 0.8, 1.2)
        torch.testing.assert_close(got, reference.combined_distance(t, s, 0.8, 1.2), **_tol(dtype))


@pytest.mark.skipif(not CPP, reason="fastmsfd._C not built")
def test_cpp_handles_non_contiguous_inputs():
    from fastmsfd.ops import compiled

    t, s = _pair(2, 6, 5, 5)
    tn, sn = t.transpose(2, 3), s.transpose(2, 3)
    assert not tn.is_contiguous()
    torch.testing.assert_close(compiled.distance_map(tn, sn), reference.combined_distance(tn, sn))
    tc, sc = t.contiguous(memory_format=torch.channels_last), s.contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(compiled.distance_map(tc, sc), reference.combined_distance(t, s))
# The fused anomaly map and loss of every compiled backend: tests/test_backends.py.


def test_topk_count_rounds_once_for_every_backend():
    # 0.05 * 6 * 30 is 9.000000000000002 when multiplied left to right: the pixel count is formed first
    assert reference.topk_count(0.05, 6 * 30) == 9
    t, s = _pair(1, 1, 1, 2)
    heat, score = ops.anomaly_map([t], [s], (6, 30), topk=0.05, backend="reference")
    assert score.item() == pytest.approx(heat.flatten().topk(9).values.mean().item(), rel=1e-6)
    if CPP:
        torch.testing.assert_close(ops.anomaly_map([t], [s], (6, 30), topk=0.05, backend="cpp")[1], score)
