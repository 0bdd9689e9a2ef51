"""The global branch (fastmsfd/global_score.py): pooled deep teacher features, their nearest-neighbour memory or
Ledoit-Wolf Gaussian, the distance to it, fusion with the map score. Checked against scikit-learn and brute
force, across runtimes (ONNX Runtime, OpenVINO: 1e-4 of the heatmap's magnitude, scores 1e-4 relative), through
checkpoints, and on bad input."""
import warnings

import numpy as np
import pytest
import torch

from fastmsfd import Detector, global_score
from fastmsfd.runtimes import runtime_status

from .serve_fixtures import brick_crops, defective_crop

SIZE = 64


@pytest.mark.parametrize("n,c", [(50, 20), (12, 40), (300, 64), (3, 8)])
def test_ledoit_wolf_matches_scikit_learn(n, c):
    sk = pytest.importorskip("sklearn.covariance")
    x = torch.randn(n, c, generator=torch.Generator().manual_seed(n)) * torch.rand(c) * 3 + torch.randn(c)
    mean, precision, shrinkage = global_score.ledoit_wolf(x)
    ref = sk.LedoitWolf().fit(x.double().numpy())
    assert shrinkage == pytest.approx(ref.shrinkage_, rel=1e-5)
    np.testing.assert_allclose(mean.numpy(), ref.location_, rtol=1e-5, atol=1e-6)
    scale = np.abs(ref.precision_).max()
    np.testing.assert_allclose(precision.numpy(), ref.precision_, atol=1e-4 * scale)  # float32 of a float64 inverse


def test_mahalanobis_is_the_brute_force_formula():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(6, 6))
    prec = a @ a.T + np.eye(6)
    mean, x = rng.normal(size=6), rng.normal(size=(5, 6))
    want = [np.sqrt((v - mean) @ prec @ (v - mean)) for v in x]
    got = global_score.mahalanobis(torch.tensor(x, dtype=torch.float32), torch.tensor(mean, dtype=torch.float32),
                                   torch.tensor(prec, dtype=torch.float32))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("b,m,c", [(5, 7, 6), (1, 1, 3), (9, 40, 64), (4, 300, 328)])
def test_nearest_distance_is_the_brute_force_minimum(b, m, c, dtype):
    """The matrix-product form against pairwise differences in float64 of the same (rounded) inputs: 1e-4
    relative, and absolute sqrt(8 eps |x|^2) of float32, the precision it computes in whatever the input's, as
    |x|^2 - 2 x.m + |m|^2 cancels when x lies on a memory row (the last query does)."""
    g = torch.Generator().manual_seed(b * m + c)
    memory, x = torch.randn(m, c, generator=g) * 3 + 1, torch.randn(b, c, generator=g) * 3 + 1
    x[-1] = memory[m // 2]
    memory, x = memory.to(dtype), x.to(dtype)
    want = (x.double()[:, None] - memory.double()[None]).norm(dim=-1).min(dim=1).values
    got = global_score.nearest_distance(x, memory)
    atol = cancellation_tolerance(torch.cat([x, memory]))
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=atol)
    assert got.shape == (b,) and float(got[-1]) <= atol


def cancellation_tolerance(rows: torch.Tensor) -> float:
    return (8 * torch.finfo(torch.float32).eps * float(rows.pow(2).sum(1).max())) ** 0.5


@pytest.mark.parametrize("n,c", [(2, 5), (6, 3), (50, 64)])
def test_leave_one_out_distance_skips_only_the_row_itself(n, c):
    x = torch.randn(n, c, generator=torch.Generator().manual_seed(n))
    x[-1] = x[0]  # a duplicate image is a real neighbour at distance 0
    d = (x.double()[:, None] - x.double()[None]).norm(dim=-1)
    d.fill_diagonal_(float("inf"))
    got = global_score.leave_one_out_distance(x)
    atol = cancellation_tolerance(x)  # as above
    torch.testing.assert_close(got.double(), d.min(dim=1).values, rtol=1e-4, atol=atol)
    assert float(got[0]) <= atol and float(got[-1]) <= atol


def test_memory_keeps_every_image_or_a_greedy_k_centre_cover():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(200, 8, generator=g), torch.randn(3, 8, generator=g) + 20])  # 3 rare looks
    torch.testing.assert_close(global_score.memory_bank(x, max_size=203), x)
    kept = global_score.memory_bank(x, max_size=20)
    assert kept.shape == (20, 8)
    rows = [int((x - r).abs().sum(1).argmin()) for r in kept]
    assert len(set(rows)) == 20 and {200, 201, 202} <= set(rows)  # distinct images, the rare ones kept
    # brute-force greedy k-centre from the same start: each next row the farthest from those kept
    want = [int((x - x.mean(0)).pow(2).sum(1).argmin())]
    for _ in range(19):
        d = torch.stack([(x - x[i]).pow(2).sum(1) for i in want]).min(0).values
        want.append(int(d.argmax()))
    assert rows == want
    cover = lambda rows_: (x[:, None] - x[rows_][None]).norm(dim=-1).min(1).values.max()  # noqa: E731
    random_rows = torch.randperm(203, generator=g)[:20].tolist()
    assert cover(rows) <= cover(random_rows)
    with pytest.raises(ValueError, match="at least 2 normal images"):
        global_score.memory_bank(torch.randn(1, 8))


@pytest.mark.parametrize("density", ["nearest", "gaussian"])
@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_both_densities_score_alike_in_every_runtime_and_file(density, runtime, tmp_path):
    """Random statistics stand in for a fit (a 9-row memory; a random positive definite precision)."""
    if runtime_status()[runtime]:
        pytest.skip(runtime_status()[runtime])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector(image_size=SIZE, runtime="torch", weights="random", global_density=density)
    g = torch.Generator().manual_seed(3)
    c = det.model.global_mean.shape[0]
    if density == "nearest":
        det.model.global_memory = torch.randn(9, c, generator=g)
    else:
        a = torch.randn(c, c, generator=g) / c ** 0.5
        det.model.global_mean.copy_(torch.randn(c, generator=g))
        det.model.global_precision.copy_(a @ a.T + torch.eye(c))
    det.model.score_stats.copy_(torch.tensor([0.5, 2.0, 3.0, 4.0]))
    det.fitted = True
    import onnx

    from fastmsfd.checkpoint import GLOBAL_BUFFERS
    from fastmsfd.export import onnx_bytes

    shapes = {tuple(t.dims) for t in onnx.load_from_string(onnx_bytes(det)).graph.initializer}
    # the graph carries only what its density reads: the memory's 9 rows, or the precision matrix
    assert ((9, c) in shapes, (c, c) in shapes) == ((True, False) if density == "nearest" else (False, True))
    assert set(GLOBAL_BUFFERS[density]) <= {n for n, _ in det.model.named_buffers()}
    path = tmp_path / f"{density}.fastmsfd"
    det.save(path)
    x = brick_crops(3, seed=11) + [defective_crop()]
    ref = det.predict(x)
    with torch.no_grad():
        feats = det.model.whole_image_features(det.model.normalize(torch.stack([torch.from_numpy(a).permute(2, 0, 1)
                                                                   for a in x]))).double()
        glob = det.model.global_distance(feats.float()).double()
    if density == "nearest":
        want = (feats[:, None] - det.model.global_memory.double()[None]).norm(dim=-1).min(dim=1).values
    else:
        d = feats - det.model.global_mean.double()
        want = ((d @ det.model.global_precision.double()) * d).sum(1).sqrt()
    torch.testing.assert_close(glob, want, rtol=1e-4, atol=1e-4)
    again = Detector.load(path, runtime="torch")
    assert again.settings.score.global_density == density
    assert torch.equal(again.predict(x).scores, ref.scores)
    other = Detector.load(path, runtime=runtime, precision="float32").predict(x)
    torch.testing.assert_close(other.scores, ref.scores, rtol=1e-4, atol=1e-4)


def test_few_images_shrink_and_warn_with_how_many_would_do():
    with pytest.warns(UserWarning, match=r"5 normal images for 32 feature channels.*33 or more"):
        mean, precision = global_score.fit_density(torch.randn(5, 32))
    assert torch.isfinite(precision).all() and torch.linalg.eigvalsh(precision.double()).min() > 0
    with pytest.raises(ValueError, match="at least 2 normal images"):
        global_score.fit_density(torch.randn(1, 32))


@pytest.fixture(scope="module")
def fitted():
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few images for 192 channels: the shrinkage warning is expected here
        det = Detector(image_size=SIZE, runtime="torch", global_layer="auto", global_weight="auto")
        det.fit(brick_crops(24), epochs=1, batch_size=8, progress=False)
    return det


def test_fused_score_is_the_weighted_sum_of_standardised_scores(fitted):
    u8 = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in brick_crops(3, seed=5)])
    with torch.no_grad():
        out = fitted.model(u8)
        _, map_score, glob = fitted.model.map_and_global(fitted.model.normalize(u8))
    m0, m1, g0, g1 = fitted.model.score_stats.tolist()
    w = fitted.settings.score.global_weight
    torch.testing.assert_close(out.map_z, (map_score - m0) / m1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.global_z, (glob - g0) / g1, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.score, (1 - w) * (map_score - m0) / m1 + w * (glob - g0) / g1, rtol=1e-5,
                               atol=1e-5)
    assert fitted.settings.score.global_layer == "stage5,stage6" and 0 <= w <= 1
    assert fitted.settings.score.global_backbone == "efficientnet_lite2"
    choice = fitted.info["global_weight_choice"]
    assert choice["weight"] == w and len(choice["synthetic_auroc"]) == 11 and choice["n_synthetic"] > 0


@pytest.mark.parametrize("runtime", ["onnxruntime", "openvino"])
def test_runtimes_and_checkpoints_carry_the_global_branch(fitted, tmp_path, runtime):
    if runtime_status()[runtime]:
        pytest.skip(runtime_status()[runtime])
    path = tmp_path / "g.fastmsfd"
    fitted.save(path)
    x = brick_crops(4, seed=8) + [defective_crop()]
    ref = fitted.predict(x)
    again = Detector.load(path, runtime="torch").predict(x)
    assert torch.equal(again.scores, ref.scores) and torch.equal(again.heatmaps, ref.heatmaps)
    other = Detector.load(path, runtime=runtime, precision="float32").predict(x)
    scale = ref.heatmaps.abs().max().item()
    assert (other.heatmaps - ref.heatmaps).abs().max().item() <= 1e-4 * scale
    torch.testing.assert_close(other.scores, ref.scores, rtol=1e-4, atol=1e-4)


def test_files_without_the_global_branch_load_and_score_the_map_alone(tmp_path):
    from fastmsfd.checkpoint import load_checkpoint, save_checkpoint

    det = Detector(image_size=SIZE, runtime="torch", layers=("stage2", "stage3", "stage4"), global_layer=None)
    det.calibrate(brick_crops(4))
    path = tmp_path / "old.fastmsfd"
    det.save(path)
    tensors, config = load_checkpoint(path)
    for key in ("global_layer", "global_weight"):  # what files written before the branch hold
        config.pop(key)
    save_checkpoint(path, tensors, config)
    old = Detector.load(path, runtime="torch")
    assert old.settings.score.global_layer is None and not hasattr(old, "score_stats")
    x = brick_crops(3, seed=2)
    assert torch.equal(old.predict(x).scores, det.predict(x).scores)


def test_the_branch_runs_on_its_own_teacher_and_only_where_needed(fitted):
    """The default branch: EfficientNet-Lite2's pooled stage5 and stage6, standardised by its own statistics; the
    map's features (training, tiles) never run it."""
    from fastmsfd.backbones import build_teacher

    x = fitted.model.normalize(torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in brick_crops(3, seed=6)]))
    ref = build_teacher("efficientnet_lite2", ["stage5", "stage6"])  # the packaged weights, built afresh
    ref.load_state_dict(fitted.model.global_teacher.state_dict())  # ... with the statistics fit measured
    with torch.no_grad():
        want = torch.cat([f.float().mean(dim=(2, 3)) for f in ref(x)], dim=1)
        torch.testing.assert_close(fitted.model.all_features(x)[2], want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fitted.model.pooled_global(x), want, rtol=1e-5, atol=1e-5)
    g = fitted.model.global_teacher
    assert not torch.equal(g.mean0, torch.zeros_like(g.mean0)) and not torch.equal(g.std0, torch.ones_like(g.std0))
    calls = []
    hook = fitted.model.global_teacher.register_forward_hook(lambda *a: calls.append(1))
    try:
        with torch.no_grad():
            fitted.model.features(x)
        assert calls == []
        with torch.no_grad():
            fitted.model.map_and_global(x)
        assert len(calls) == 1
    finally:
        hook.remove()


def test_a_global_teacher_of_another_normalisation_sees_its_own_inputs():
    """ResNet maps (ImageNet mean/std) with an EfficientNet-Lite branch ((x - 127) / 128): the branch's inputs
    are converted, in the detector and in the exported graph alike (float32 within 1e-4 of the score's size)."""
    from fastmsfd.backbones import normalization
    from tests.onnx_checks import run_exported

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector(backbone="resnet18", image_size=SIZE, runtime="torch", weights="random",
                       global_backbone="efficientnet_lite2", global_layer="stage5").eval()
    assert det.settings.score.global_backbone == "efficientnet_lite2" and det.model.global_renormalize
    u8 = (torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3)) * 255).to(torch.uint8)
    raw = u8.float() / 255
    g_mean, g_std = (torch.tensor(v).view(1, 3, 1, 1) for v in normalization("efficientnet_lite2"))
    with torch.no_grad():
        want = det.model.global_teacher((raw - g_mean) / g_std)[0].mean(dim=(2, 3))
        torch.testing.assert_close(det.model.pooled_global(det.model.normalize(u8)), want, rtol=1e-5, atol=1e-5)
        heat, score = det(raw)
    g_heat, g_score = run_exported(det, u8)[:2]
    torch.testing.assert_close(g_heat, heat, rtol=1e-4, atol=1e-4 * heat.abs().max().item())
    torch.testing.assert_close(g_score, score, rtol=1e-4, atol=1e-4 * score.abs().max().item())


@pytest.mark.parametrize("global_backbone", ["efficientnet_lite2", None])
def test_several_global_layers_are_pooled_side_by_side(global_backbone):
    """global_layer="stage5,stage6" (or a list): one Gaussian over both layers' pooled features, concatenated."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector(image_size=SIZE, runtime="torch", weights="random", global_backbone=global_backbone,
                       global_layer=["stage6", "stage5"]).eval()
    assert det.settings.score.global_layer == "stage6,stage5"
    net = det.model.global_teacher or det.model.teacher
    layers = list(net.layers)
    x = det.model.normalize((torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1)) * 255).byte())
    with torch.no_grad():
        feats = dict(zip(layers, net(x)))
        want = torch.cat([feats["stage5"].mean(dim=(2, 3)), feats["stage6"].mean(dim=(2, 3))], dim=1)
        torch.testing.assert_close(det.model.pooled_global(x), want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(det.model.all_features(x)[2], want, rtol=1e-5, atol=1e-5)
    assert det.model.global_mean.shape == (want.shape[1],) and det.model.global_precision.shape == (want.shape[1],) * 2


def test_files_whose_branch_used_the_map_teacher_load_as_before(tmp_path):
    """Files written before global_backbone existed pooled the map teacher's layer: they keep doing so."""
    from fastmsfd.checkpoint import load_checkpoint, save_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector(image_size=SIZE, runtime="torch", global_backbone=None, global_layer="stage7")
    assert det.model.global_teacher is None and det.settings.score.global_layer == "stage7"
    det.calibrate(brick_crops(4))
    path = tmp_path / "before.fastmsfd"
    det.save(path)
    tensors, config = load_checkpoint(path)
    config.pop("global_backbone")
    assert not any(k.startswith("global_teacher.") for k in tensors)
    save_checkpoint(path, tensors, config)
    old = Detector.load(path, runtime="torch")
    assert old.model.global_teacher is None and old.settings.score.global_backbone is None
    x = brick_crops(3, seed=4)
    assert torch.equal(old.predict(x).scores, det.predict(x).scores)


def test_bad_global_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="no layer 'stage9'"):
        Detector(image_size=SIZE, global_layer="stage9", weights="random")
    with pytest.raises(ValueError, match="efficientnet_lite2 has no layer 'layer3'"):
        Detector(image_size=SIZE, global_layer="layer3", weights="random")
    with pytest.raises(ValueError, match="unknown backbone 'efficientnet_b9'"):
        Detector(image_size=SIZE, global_backbone="efficientnet_b9", weights="random")
    with pytest.raises(ValueError, match="names a layer twice"):
        Detector(image_size=SIZE, global_layer="stage6,stage6", weights="random")
    with pytest.raises(ValueError, match="'resnet34' has no default global layer.*layer4"):
        Detector(image_size=SIZE, global_backbone="resnet34", weights="random")
    with pytest.raises(ValueError, match="global_weight"):
        Detector(image_size=SIZE, global_layer="stage6", global_weight=1.5, weights="random")


def test_synthetic_anomalies_change_only_a_defect_region():
    from fastmsfd.fit import synthetic_anomalies

    imgs = torch.stack([torch.from_numpy(a).permute(2, 0, 1) for a in brick_crops(3, size=64)])
    bad = synthetic_anomalies(imgs, seed=0, per_image=2)
    assert bad.shape == (6, 3, 64, 64) and bad.dtype == torch.uint8
    for i in range(6):
        changed = (bad[i].int() - imgs[i // 2].int()).abs().amax(0) > 2
        assert 0 < changed.float().mean() < 0.5  # a defect, not a different image


def test_one_held_out_image_does_not_blow_up_the_fused_scores():
    """8 normal images hold out 1: its scores have no spread, so the scales come from all 8, with a warning."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match=r"1 held-out normal image\(s\).*all 8 normal images"):
        det = Detector(image_size=SIZE, runtime="torch").fit(brick_crops(8, seed=3), epochs=1, progress=False)
    assert det.info["n_val"] == 1
    m0, m1, g0, g1 = det.model.score_stats.tolist()
    assert m1 > 1e-3 and g1 > 1e-3  # a real spread, not the 1e-6 floor of a single image
    scores = det.predict(brick_crops(4, seed=9) + [defective_crop()]).scores
    assert scores.abs().max() < 1e3


def test_the_memory_holds_the_training_images_and_they_score_as_new_ones():
    """global_density="nearest": the memory is the training split's pooled features; with too few held out,
    the training images among the scale images score leave-one-out (a 0 against themselves would shrink the
    spread the fusion divides by)."""
    from fastmsfd.datasets import normal_images_u8
    from fastmsfd.fit import split_held_out

    torch.manual_seed(0)
    crops = brick_crops(8, seed=3)
    with pytest.warns(UserWarning, match="all 8 normal images"):
        det = Detector(image_size=SIZE, runtime="torch").fit(crops, epochs=1, progress=False)
    train, held_out, _ = split_held_out(normal_images_u8(crops, det.input_hw), 0.1, 0)  # as fit resized them
    with torch.no_grad():
        pooled = det.model.whole_image_features(det.model.normalize(train))
        held_score = det.model.global_distance(det.model.whole_image_features(det.model.normalize(held_out)))
    torch.testing.assert_close(det.model.global_memory, pooled, rtol=1e-5, atol=1e-5)
    assert det.model.global_distance(pooled).max() <= cancellation_tolerance(pooled)  # each on its own row
    want = torch.cat([held_score, global_score.leave_one_out_distance(pooled)]).double()
    torch.testing.assert_close(det.model.score_stats[2:].double(),
                               torch.stack([want.mean(), want.std()]).float().double(),
                               rtol=1e-4, atol=1e-5)


def test_files_from_before_the_density_setting_keep_the_gaussian(tmp_path):
    from fastmsfd.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector(image_size=SIZE, runtime="torch", global_density="gaussian")
    det.calibrate(brick_crops(4))
    path = tmp_path / "before.fastmsfd"
    det.save(path)
    tensors, config = load_checkpoint(path)
    assert "global_memory" not in tensors and "global_precision" in tensors
    config.pop("global_density")
    save_checkpoint(path, tensors, config)
    old = Detector.load(path, runtime="torch")
    assert old.settings.score.global_density == "gaussian"
    x = brick_crops(3, seed=4)
    assert torch.equal(old.predict(x).scores, det.predict(x).scores)
    # a nearest-neighbour file whose memory does not match the branch's channels is refused by name
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        near = Detector(image_size=SIZE, runtime="torch", weights="random")
    near.save(path)
    tensors, config = load_checkpoint(path)
    tensors["global_memory"] = torch.zeros(5, 7)
    save_checkpoint(path, tensors, config)
    with pytest.raises(CheckpointError, match=f"{path.name}: global_memory missing or of the wrong shape"):
        Detector.load(path)
    with pytest.raises(ValueError, match="global_density"):
        Detector(image_size=SIZE, global_density="knn", weights="random")
