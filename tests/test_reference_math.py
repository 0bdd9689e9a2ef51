"""The reference implementation against brute-force NumPy (tests/brute_force.py) on small random inputs:
odd sizes, borders, truncation. Tolerance: 1e-5 relative (float32 reference vs float64 brute force)."""
import numpy as np
import pytest
import torch

from fastmsfd import calibration, ops
from fastmsfd.ops import reference

from . import brute_force as bf

RTOL, ATOL = 1e-5, 1e-6


def _feats(rng, B, C, h, w):
    return (rng.standard_normal((B, C, h, w)).astype(np.float32),
            rng.standard_normal((B, C, h, w)).astype(np.float32))


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 3, 5, 7), (3, 17, 4, 1), (1, 64, 3, 3)])
@pytest.mark.parametrize("alpha,beta", [(1.0, 1.0), (0.0, 1.0), (2.5, 0.0), (0.3, 1.7)])
def test_combined_distance_matches_brute_force(rng, shape, alpha, beta):
    t, s = _feats(rng, *shape)
    got = reference.combined_distance(torch.from_numpy(t), torch.from_numpy(s), alpha, beta).numpy()
    np.testing.assert_allclose(got, bf.distance(t, s, alpha, beta), rtol=RTOL, atol=ATOL)


def test_distance_of_zero_vectors_uses_eps_not_nan():
    z = torch.zeros(1, 4, 2, 2)
    d = reference.combined_distance(z, z)
    assert torch.isfinite(d).all() and torch.allclose(d, torch.ones_like(d))  # cos term: 1 - 0/eps^2 = 1


@pytest.mark.parametrize("out_len,n,sigma,radius", [
    (16, 4, 4.0, None), (17, 5, 2.0, None), (7, 7, 0.6, None), (32, 3, 1.0, None),  # tiny sigma: r floor
    (20, 6, 3.0, 2.0), (9, 2, 10.0, 4.0), (5, 1, 1.0, None), (1, 1, 1.0, None), (64, 8, 8.0, 0.0)])
def test_gaussian_matrix_matches_brute_force(out_len, n, sigma, radius):
    got = reference.gaussian_matrix(out_len, n, sigma, radius).numpy()
    want = bf.gaussian(out_len, n, sigma, radius)
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=1e-7)
    np.testing.assert_allclose(got.sum(1), 1.0, rtol=1e-6)


def test_gaussian_truncation_and_every_row_sees_a_cell():
    G = reference.gaussian_matrix(32, 4, sigma=1.0).numpy()  # spacing 8: 3 sigma < half spacing, floor applies
    assert (G > 0).sum(1).min() >= 1
    # beyond max(3 sigma, spacing/2) = 4 pixels from a centre, the weight is exactly zero
    centres = (np.arange(4) + 0.5) * 8 - 0.5
    far = np.abs(np.arange(32)[:, None] - centres[None]) > 4
    assert (G[far] == 0).all()


def test_gaussian_matrix_tiny_sigma_does_not_underflow():
    G = reference.gaussian_matrix(64, 4, sigma=0.05).numpy()
    assert np.isfinite(G).all()
    np.testing.assert_allclose(G.sum(1), 1.0, rtol=1e-6)


def test_gaussian_matrix_rejects_bad_sigma():
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="sigma"):
            reference.gaussian_matrix(8, 2, bad)


@pytest.mark.parametrize("mode", ["sum", "mean", "max", "product"])
@pytest.mark.parametrize("case", [
    dict(B=2, layers=[(3, 4, 4), (5, 2, 2)], out=(8, 8)),
    dict(B=1, layers=[(4, 3, 5), (2, 2, 3), (3, 1, 1)], out=(9, 11)),
    dict(B=3, layers=[(6, 5, 3)], out=(10, 7)),
])
def test_anomaly_map_matches_brute_force(rng, mode, case):
    B, (H, W) = case["B"], case["out"]
    T, S, maps = [], [], []
    weights = list(rng.uniform(0.2, 2.0, len(case["layers"])))
    sigmas = list(rng.uniform(0.7, 3.0, len(case["layers"])))
    for (C, h, w), sg in zip(case["layers"], sigmas):
        t, s = _feats(rng, B, C, h, w)
        T.append(torch.from_numpy(t))
        S.append(torch.from_numpy(s))
        maps.append(bf.upsample(bf.distance(t, s, 1.0, 0.5), bf.gaussian(H, h, sg), bf.gaussian(W, w, sg)))
    want = bf.aggregate(maps, weights, mode)
    heat, score = ops.anomaly_map(T, S, (H, W), layer_weights=weights, alpha=1.0, beta=0.5, sigmas=sigmas,
                                  aggregate=mode, backend="reference")
    np.testing.assert_allclose(heat.numpy(), want, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(score.numpy(), want.reshape(B, -1).max(1), rtol=1e-4, atol=1e-5)


def test_topk_score_is_mean_of_top_fraction(rng):
    heat = torch.from_numpy(rng.standard_normal((3, 10, 10)).astype(np.float32))
    got = reference.image_score(heat, topk=0.05)
    want = np.sort(heat.numpy().reshape(3, -1), axis=1)[:, -5:].mean(1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("mode", ["sum", "mean", "max", "product"])
def test_final_blur_equals_blurring_the_heatmap(rng, mode):
    """Folding the blur into G (sum/mean) must equal blurring the aggregated heatmap afterwards."""
    T = [torch.randn(2, 4, 4, 4), torch.randn(2, 3, 2, 2)]
    S = [torch.randn(2, 4, 4, 4), torch.randn(2, 3, 2, 2)]
    kw = dict(layer_weights=[1.0, 0.5], sigmas=[2.0, 4.0], aggregate=mode, backend="reference")
    plain, _ = ops.anomaly_map(T, S, (16, 16), **kw)
    blurred, _ = ops.anomaly_map(T, S, (16, 16), blur_sigma=1.5, **kw)
    B = torch.from_numpy(bf.gaussian(16, 16, 1.5)).float()
    np.testing.assert_allclose(blurred.numpy(), (B @ plain @ B.T).numpy(), rtol=1e-5, atol=1e-6)


def test_distill_loss_value_and_gradient(rng):
    shapes = [(2, 5, 3, 3), (2, 7, 2, 1)]
    T = [torch.from_numpy(_feats(rng, *sh)[0]).double() for sh in shapes]
    S = [torch.from_numpy(_feats(rng, *sh)[1]).double().requires_grad_() for sh in shapes]
    loss = ops.distill_loss(T, S, alpha=0.7, beta=1.3, layer_weights=[1.0, 2.0], backend="reference")
    want = sum(w * bf.distance(t.numpy(), s.detach().numpy(), 0.7, 1.3).mean()
               for w, t, s in zip([1.0, 2.0], T, S))
    assert abs(loss.item() - want) < 1e-9
    assert torch.autograd.gradcheck(
        lambda a, b: ops.distill_loss([T[0], T[1]], [a, b], 0.7, 1.3, [1.0, 2.0], backend="reference"),
        (S[0], S[1]))


@pytest.mark.parametrize("out_len,n", [(1, 1), (7, 3), (32, 8), (33, 5), (5, 9), (64, 64)])
def test_bilinear_matrix_is_f_interpolate(rng, out_len, n):
    """The STPM-style baseline's up-sampling as a separable matrix equals F.interpolate (align_corners=False)."""
    d = torch.from_numpy(rng.standard_normal((2, n, n + 2)).astype(np.float32))
    # float64 on both sides: F.interpolate forms its float32 weights with ~1e-5 relative error of its own
    want = torch.nn.functional.interpolate(d.double()[:, None], size=(out_len, out_len + 3), mode="bilinear",
                                           align_corners=False)[:, 0]
    got = reference.upsample(d.double(), reference.bilinear_matrix(out_len, n),
                             reference.bilinear_matrix(out_len + 3, n + 2))
    torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)  # our matrix is float32: 1e-7 relative


def test_bilinear_anomaly_map_runs_on_the_reference_only(rng):
    t = [torch.from_numpy(a) for a in _feats(rng, 2, 5, 4, 6)]
    s = [torch.from_numpy(a) for a in _feats(rng, 2, 5, 4, 6)]
    heat, score = ops.anomaly_map([t[0]], [s[0]], (16, 24), aggregate="product", upsampling="bilinear")
    want = torch.nn.functional.interpolate(reference.combined_distance(t[0], s[0])[:, None], size=(16, 24),
                                           mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(heat, want, rtol=1e-5, atol=1e-6)
    assert ops.last_backend()[0] == "reference" and "Gaussian" in ops.last_backend()[1][0]
    with pytest.raises(RuntimeError, match="Gaussian up-sampling only"):
        ops.anomaly_map([t[0]], [s[0]], (16, 24), upsampling="bilinear", backend="cpp")
    with pytest.raises(ValueError, match="upsampling must be one of"):
        ops.anomaly_map([t[0]], [s[0]], (16, 24), upsampling="nearest")


@pytest.mark.parametrize("N,H,W", [(1, 1, 1), (2, 5, 7), (3, 8, 8), (1, 9, 4), (4, 13, 13)])
@pytest.mark.parametrize("smooth", [0.0, 1.0, 2.5])
def test_border_statistics_match_brute_force(rng, N, H, W, smooth):
    # each pixel's own border distance enters, so a map that grows toward the edges is the hard case
    ring = calibration.border_distance(H, W).numpy()
    maps = (rng.standard_normal((N, H, W)) * (1 + 0.3 * (ring.max() - ring))).astype(np.float32)
    mean, std = calibration.border_statistics(torch.from_numpy(maps), smooth)
    want_mean, want_std = bf.border_statistics(maps, smooth)
    np.testing.assert_allclose(mean.numpy(), want_mean, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(std.numpy(), want_std, rtol=RTOL, atol=ATOL)


def test_border_distance_and_standardize():
    d = calibration.border_distance(4, 5)
    assert d.tolist() == [[0, 0, 0, 0, 0], [0, 1, 1, 1, 0], [0, 1, 1, 1, 0], [0, 0, 0, 0, 0]]
    heat = torch.arange(40, dtype=torch.float32).view(2, 4, 5)
    mean, std = torch.full((4, 5), 3.0), torch.full((4, 5), 2.0)
    torch.testing.assert_close(calibration.standardize(heat, mean, std), (heat - 3) / 2)


def test_border_statistics_standardise_normal_maps_ring_by_ring(rng):
    # maps whose level and spread depend on the distance to the border: after standardising with their own
    # statistics (no pooling), every ring has mean 0 and std 1
    ring = calibration.border_distance(16, 16).numpy()
    maps = torch.from_numpy(rng.standard_normal((50, 16, 16)) * (3.0 - 0.3 * ring) + 5.0 * (ring == 0))
    mean, std = calibration.border_statistics(maps.float(), smooth=0)
    z = calibration.standardize(maps, mean, std)
    for r in range(8):
        sel = z[:, torch.from_numpy(ring == r)]
        assert abs(float(sel.mean())) < 1e-4 and abs(float(sel.std(unbiased=False)) - 1) < 1e-4


def test_border_statistics_floor_a_constant_ring():
    maps = torch.rand(3, 6, 6)
    maps[:, 2:4, 2:4] = 0.5  # the innermost ring never varies: its std is floored, not zero
    _, std = calibration.border_statistics(maps, smooth=0)
    assert float(std[3, 3]) > 0 and torch.isfinite(calibration.standardize(maps, torch.zeros(6, 6), std)).all()
    with pytest.raises(ValueError, match="N, H, W"):
        calibration.border_statistics(torch.rand(6, 6))


@pytest.mark.parametrize("n", [20, 27, 76, 300])
def test_far_out_is_tukeys_fence(rng, n):
    """calibration.far_out against numpy's quartiles on fresh normal scores with planted far values."""
    s = rng.normal(size=n)
    k = 1 if n < 25 else 2  # planted far values; more would move the quartiles of a few scores
    s[rng.choice(n, k, replace=False)] += rng.uniform(8, 20, k) * (np.quantile(s, 0.75) - np.quantile(s, 0.25))
    s = s.astype(np.float32).astype(np.float64)  # what the float32 scores hold
    q1, q3 = np.quantile(s, [0.25, 0.75])
    want = s > q3 + calibration.FAR_OUT_IQRS * (q3 - q1)
    got = calibration.far_out(torch.from_numpy(s).float())  # float64 inside, as here
    assert got.dtype == torch.bool and got.tolist() == want.tolist() and got.sum() >= 1


def test_far_out_needs_enough_scores_and_a_spread():
    spread = [0.0, 0.1, 0.2, 0.3] * 5
    assert not calibration.far_out(torch.tensor(spread[:18] + [50.0])).any()  # 19 < 20 scores
    assert calibration.far_out(torch.tensor(spread[:19] + [50.0])).tolist() == [False] * 19 + [True]
    assert not calibration.far_out(torch.tensor([1.0] * 25 + [50.0])).any()  # quartiles equal: no fence
