"""Every compiled backend usable here (cpp on CPU, triton under TRITON_INTERPRET=1; cuda/triton on a GPU) against
the reference (fastmsfd/ops/reference.py) on fresh random inputs: many shapes, all aggregation modes, dtypes and
layouts, the loss gradient, NaN behaviour, thread-count independence, opcheck and torch.compile.

Tolerances: float32 within 1e-5 of the reference, relative to the output's magnitude (only summation order
differs); float16/bfloat16 by the rule in backend_checks.assert_dtype_rule (error against float64 at most twice
the reference's own error in that dtype). Outputs are poisoned (NaN-filled allocations) so a skipped element
fails."""
import functools
import math

import pytest
import torch

from fastmsfd import ops
from fastmsfd.ops import reference

from .backend_checks import assert_dtype_rule, backends_for, feature_pair, poisoned_outputs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = backends_for(DEVICE)
pytestmark = pytest.mark.skipif(not BACKENDS, reason=f"no compiled backend usable on {DEVICE}: "
                                f"{ops.backend_status(DEVICE)}")
backend_param = pytest.mark.parametrize("backend", BACKENDS or ["none"])

# (B, C, h, w) per layer: 1x1 maps, odd sizes, C not a multiple of any vector width, B=1 and B=5, 1..4 layers,
# ResNet-like channel/size ratios.
SHAPE_SETS = [
    [(1, 1, 1, 1)],
    [(2, 3, 5, 7)],
    [(5, 33, 9, 4), (5, 17, 3, 2)],
    [(1, 64, 16, 16), (1, 128, 8, 8), (1, 256, 4, 4)],
    [(3, 1000, 2, 3)],
    [(2, 5, 40, 40)],
    [(1, 7, 33, 31), (1, 9, 17, 16), (1, 3, 9, 8), (1, 2, 5, 4)],
    [(2, 3, 6, 5), (2, 5, 4, 4), (2, 2, 3, 3), (2, 4, 3, 2), (2, 3, 2, 2), (2, 6, 1, 2)],  # 6 layers (cap: 8)
]
OUT_SIZES = [(19, 23), (64, 64), (1, 5)]


def _feats(shapes, dtype=torch.float32, layout="nchw", seed=0):
    g = torch.Generator().manual_seed(seed)
    pairs = [feature_pair(*sh, dtype=dtype, device=DEVICE, gen=g, layout=layout) for sh in shapes]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _close32(got, want):
    scale = max(want.abs().max().item(), 1e-30) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)


@backend_param
@pytest.mark.parametrize("mode", reference.AGGREGATIONS)
@pytest.mark.parametrize("shapes", SHAPE_SETS)
def test_anomaly_map_float32_matches_reference(backend, mode, shapes):
    T, S = _feats(shapes, seed=len(shapes) * 7 + reference.AGGREGATIONS.index(mode))
    for i, (out, topk, blur) in enumerate([(OUT_SIZES[0], None, None), (OUT_SIZES[1], 0.05, 1.5),
                                          (OUT_SIZES[2], 1.0, None)]):
        kw = dict(out_size=out, layer_weights=[0.5 + 0.3 * j for j in range(len(T))], aggregate=mode, topk=topk,
                  blur_sigma=blur, alpha=0.8, beta=1.3)
        h_ref, s_ref = ops.anomaly_map(T, S, backend="reference", **kw)
        with poisoned_outputs():
            h, s = ops.anomaly_map(T, S, backend=backend, **kw)
        assert ops.last_backend()[0] == backend
        _close32(h, h_ref)
        _close32(s, s_ref)


@backend_param
@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_anomaly_map_any_memory_layout(backend, layout):
    shapes = SHAPE_SETS[3]
    T, S = _feats(shapes, layout=layout)
    assert not T[0].is_contiguous()
    h_ref, s_ref = ops.anomaly_map([t.contiguous() for t in T], [s.contiguous() for s in S], (40, 40),
                                   backend="reference", topk=0.1)
    h, s = ops.anomaly_map(T, S, (40, 40), backend=backend, topk=0.1)
    _close32(h, h_ref)
    _close32(s, s_ref)


@backend_param
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", ["sum", "max"])
@pytest.mark.parametrize("shapes", [SHAPE_SETS[2], SHAPE_SETS[3], SHAPE_SETS[6]])
def test_anomaly_map_low_precision_rule(backend, dtype, mode, shapes):
    T, S = _feats(shapes, dtype=dtype)
    kw = dict(out_size=(32, 24), aggregate=mode, topk=0.02)
    exact_h, exact_s = ops.anomaly_map([t.double() for t in T], [s.double() for s in S], backend="reference", **kw)
    ref_h, ref_s = ops.anomaly_map(T, S, backend="reference", **kw)
    with poisoned_outputs():
        h, s = ops.anomaly_map(T, S, backend=backend, **kw)
    assert h.dtype == torch.float32 and s.dtype == torch.float32
    assert_dtype_rule(h, ref_h, exact_h)
    assert_dtype_rule(s, ref_s, exact_s)


@backend_param
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_feature_makes_its_image_nan_and_leaves_others_exact(backend, bad):
    T, S = _feats([(3, 8, 6, 6), (3, 16, 3, 3)])
    T[1][1, 2, 1, 2] = bad
    h_ref, s_ref = ops.anomaly_map(T, S, (24, 24), backend="reference", topk=0.1)
    h, s = ops.anomaly_map(T, S, (24, 24), backend=backend, topk=0.1)
    assert torch.isnan(h[1]).all() and math.isnan(s[1].item())  # the documented contract, as in the reference
    assert torch.isnan(h_ref[1]).all() and math.isnan(s_ref[1].item())
    _close32(h[[0, 2]], h_ref[[0, 2]])
    _close32(s[[0, 2]], s_ref[[0, 2]])


@backend_param
def test_result_does_not_depend_on_thread_count(backend):
    if DEVICE != "cpu" or backend != "cpp":
        pytest.skip("thread count is a matter of the OpenMP CPU kernels")
    T, S = _feats([(4, 96, 24, 24), (4, 160, 12, 12)])
    S = [s.requires_grad_() for s in S]
    before = torch.get_num_threads()
    results = []
    try:
        for n in (1, max(2, before)):
            torch.set_num_threads(n)
            heat, score = ops.anomaly_map(T, S, (48, 48), backend=backend, topk=0.05)
            loss = ops.distill_loss(T, S, backend=backend)
            grads = torch.autograd.grad(loss, S)
            results.append((heat, score, loss, grads))
    finally:
        torch.set_num_threads(before)
    (h1, s1, l1, g1), (h2, s2, l2, g2) = results
    assert torch.equal(h1, h2) and torch.equal(s1, s2) and torch.equal(l1, l2)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))


# ---- distillation loss forward and backward ------------------------------------------------------------------

def _loss_and_grads(T, S, backend, weights=None):
    S = [s.detach().clone().requires_grad_() for s in S]
    loss = ops.distill_loss(T, S, alpha=0.9, beta=1.1, layer_weights=weights, backend=backend)
    return loss, torch.autograd.grad(loss, S)


@backend_param
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "strided"])
@pytest.mark.parametrize("shapes", SHAPE_SETS)
def test_loss_and_gradient_match_reference(backend, layout, shapes):
    T, S = _feats(shapes, layout=layout, seed=3)
    weights = [1.0 + j for j in range(len(T))]
    l_ref, g_ref = _loss_and_grads(T, S, "reference", weights)
    with poisoned_outputs():
        loss, g = _loss_and_grads(T, S, backend, weights)
    _close32(loss, l_ref)
    for a, b, s in zip(g, g_ref, S):
        assert a.shape == s.shape and a.dtype == s.dtype
        _close32(a, b)


@backend_param
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_loss_gradient_low_precision_rule(backend, dtype):
    T, S = _feats(SHAPE_SETS[3], dtype=dtype)
    l_exact, g_exact = _loss_and_grads([t.double() for t in T], [s.double() for s in S], "reference")
    l_ref, g_ref = _loss_and_grads(T, S, "reference")
    loss, g = _loss_and_grads(T, S, backend)
    assert_dtype_rule(loss, l_ref, l_exact)
    for a, b, e in zip(g, g_ref, g_exact):
        assert a.dtype == dtype
        assert_dtype_rule(a, b, e)


@backend_param
def test_loss_gradient_at_zero_student_vector(backend):
    # max(|s|, eps) is active: no gradient through the norm, exactly like torch's clamp_min in the reference.
    T, S = _feats([(2, 5, 3, 3)])
    S[0][0, :, 1, 1] = 0.0
    l_ref, g_ref = _loss_and_grads(T, S, "reference")
    loss, g = _loss_and_grads(T, S, backend)
    _close32(loss, l_ref)
    _close32(g[0], g_ref[0])


def test_loss_gradient_is_the_true_derivative():
    # The reference itself, checked by finite differences in float64 (so the backends above inherit it).
    T, S = _feats([(2, 4, 3, 2)])
    T, S = [t.double() for t in T], [s.double().requires_grad_() for s in S]
    assert torch.autograd.gradcheck(lambda s: ops.distill_loss(T, [s], 0.7, 1.2, backend="reference"), S)


# ---- registration: opcheck and torch.compile -------------------------------------------------------------------

@backend_param
def test_ops_pass_opcheck(backend):
    T, S = _feats([(2, 8, 3, 5), (2, 4, 2, 2)])
    g = [reference.gaussian_matrix(12, t.shape[2], 2.0, None, DEVICE) for t in T]
    gc = [reference.gaussian_matrix(10, t.shape[3], 2.0, None, DEVICE) for t in T]
    if backend == "triton":
        from fastmsfd.ops import triton_ops  # noqa: F401  (registers the triton_ops and their autograd)

        prefix = "triton_"  # one namespace: fastmsfd::triton_<op> beside the C++ fastmsfd::<op>, same schema
    else:
        from fastmsfd.ops import compiled  # noqa: F401  (fake implementations and autograd)

        prefix = ""

    def op(name):
        return getattr(torch.ops.fastmsfd, prefix + name)
    checks = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    if backend == "triton" and DEVICE == "cpu":
        # AOT dispatch lowers a triton_op to the kernel itself, which the CPU interpreter would then run on fake
        # tensors; on a GPU (scripts/gpu_check.sh) the full opcheck runs.
        checks = checks[:3]
    opcheck = functools.partial(torch.library.opcheck, test_utils=checks)
    opcheck(op("distance_map").default, (T[0], S[0], 1.0, 1.0))
    d, stats = op("distance_forward")(T[0], S[0].requires_grad_(), 1.0, 1.0)
    opcheck(op("distance_forward").default, (T[0], S[0], 1.0, 1.0))
    opcheck(op("distance_backward").default,
            (torch.rand_like(d), T[0], S[0].detach(), stats.detach(), 1.0, 1.0))
    for mode in range(4):
        # one schema for both: ... mode, blur_rows, blur_cols, topk_count
        opcheck(op("anomaly_map").default, (T, [s.detach() for s in S], g, gc, [1.0, 0.5], 1.0, 1.0, mode, None, None,
                                            3))


def test_triton_and_cpp_ops_share_one_namespace_and_schema():
    pytest.importorskip("triton")
    from fastmsfd.ops import (
        compiled,  # noqa: F401
        triton_ops,  # noqa: F401
    )

    for name in ("distance_map", "distance_forward", "distance_backward", "anomaly_map"):
        cpp, tri = getattr(torch.ops.fastmsfd, name).default, getattr(torch.ops.fastmsfd, "triton_" + name).default
        # the arguments and returns; Python's schema inference writes int as SymInt (the same Python int here)
        def args(schema):
            return str(schema).split("(", 1)[1].replace("SymInt", "int")

        assert args(cpp._schema) == args(tri._schema), name


@backend_param
def test_ops_run_under_torch_compile(backend):
    T, S = _feats(SHAPE_SETS[3])
    # Inductor lowers a triton_op to its kernel, which the CPU interpreter cannot run on fake tensors: there the
    # graph is captured by Dynamo and run eagerly; on a GPU (scripts/gpu_check.sh) Inductor compiles it.
    compiler = "eager" if backend == "triton" and DEVICE == "cpu" else "inductor"

    def infer(T, S):
        heat, score = ops.anomaly_map(T, S, (32, 32), backend=backend, topk=0.05)
        return heat * 2, score

    h, s = torch.compile(infer, fullgraph=True, backend=compiler)(T, S)
    h_ref, s_ref = ops.anomaly_map(T, S, (32, 32), backend="reference", topk=0.05)
    _close32(h, 2 * h_ref)
    _close32(s, s_ref)

    def train_step(T, S):
        return ops.distill_loss(T, S, alpha=0.9, beta=1.1, backend=backend)

    S_var = [s.clone().requires_grad_() for s in S]
    loss = torch.compile(train_step, fullgraph=True, backend=compiler)(T, S_var)
    loss.backward()
    l_ref, g_ref = _loss_and_grads(T, S, "reference")
    _close32(loss.detach(), l_ref)
    for a, b in zip([s.grad for s in S_var], g_ref):
        _close32(a, b)
