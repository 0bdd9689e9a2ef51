"""ONNX export and the ONNX Runtime / OpenVINO runtimes: parity with the PyTorch path on real-looking images.

Tolerance: heatmaps within 1e-4 of the torch heatmap's magnitude (float32, only the order of operations
differs: fused convolutions, MatMul up-sampling), scores within 1e-4 relative, and identical labels at the
calibrated threshold; for a fixed and a dynamic batch."""
import numpy as np
import pytest
import torch

from fastmsfd import Detector
from fastmsfd.cli import main
from fastmsfd.model import OUTPUT_NAMES, ModelOutput
from fastmsfd.runtimes import choose, runtime_status

onnx = pytest.importorskip("onnx", reason="onnx not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
SIZE = 64


def _real_looking(n, seed=0):
    """Crops of scikit-image's brick photograph, a few with a dark scratch."""
    from skimage import data

    brick = data.brick()
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        y, x = rng.integers(0, brick.shape[0] - 96), rng.integers(0, brick.shape[1] - 96)
        crop = np.repeat(brick[y:y + 96, x:x + 96, None], 3, axis=2).copy()
        if i % 3 == 2:
            crop[40:44, 10:80] = 20
        out.append(crop)
    return out


@pytest.fixture(scope="module")
def det():
    torch.manual_seed(0)
    return Detector(image_size=SIZE, runtime="torch").fit(_real_looking(12), epochs=1, batch_size=4,
                                                          progress=False)


def _compare(heat, score, ref_heat, ref_score):
    scale = ref_heat.abs().max().item()
    assert (heat - ref_heat).abs().max().item() <= 1e-4 * scale
    torch.testing.assert_close(score, ref_score, rtol=1e-4, atol=1e-4 * scale)


def compare_outputs(got, ref):
    """Every output of the model (model.ModelOutput): heatmap and score as _compare, the score's parts within
    1e-4 of the score's scale (NaN where the reference is), and each peak where the reference heatmap is within
    1e-4 of its maximum (a tie may break either way)."""
    _compare(got.heatmap, got.score, ref.heatmap, ref.score)
    scale = max(1.0, ref.score.abs().max().item())
    torch.testing.assert_close(got.map_z, ref.map_z, rtol=1e-4, atol=1e-4 * scale)
    torch.testing.assert_close(got.global_z, ref.global_z, rtol=1e-4, atol=1e-4 * scale, equal_nan=True)
    assert got.peak.dtype == torch.int64 and got.peak.shape == (len(ref.score), 2)
    at_peak = ref.heatmap[torch.arange(len(got.peak)), got.peak[:, 0], got.peak[:, 1]]
    top = ref.heatmap.flatten(1).max(1).values
    assert ((top - at_peak) <= 1e-4 * ref.heatmap.abs().max()).all()


@pytest.mark.parametrize("dynamic", [True, False])
def test_onnx_graph_matches_torch(det, tmp_path, dynamic):
    path = det.export_onnx(tmp_path / "m.onnx", dynamic_batch=dynamic)
    model = onnx.load(str(path))
    onnx.checker.check_model(model)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["image_size"] == str(SIZE) and "normalisation is inside the graph" in meta["input"]
    assert float(meta["threshold"]) == pytest.approx(float(det.threshold))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    images = _real_looking(6, seed=1)
    u8 = torch.stack([torch.from_numpy(im).permute(2, 0, 1) for im in images])
    u8 = torch.nn.functional.interpolate(u8.float(), size=(SIZE, SIZE), mode="bilinear", antialias=True)
    u8 = u8.round().clamp(0, 255).to(torch.uint8)
    with torch.no_grad():
        ref = det.model(u8)
    assert [o.name for o in sess.get_outputs()] == list(OUTPUT_NAMES)
    batches = [u8[i:i + 2] for i in range(0, 6, 2)] if not dynamic else [u8[:1], u8[1:6]]
    parts = zip(*[sess.run(None, {"images": b.numpy()}) for b in batches])
    got = ModelOutput(*(torch.from_numpy(np.concatenate(p)) for p in parts))
    compare_outputs(got, ref)
    thr = float(det.threshold)
    assert torch.equal(got.score > thr, ref.score > thr)
    if not dynamic:
        with pytest.raises(Exception):
            sess.run(None, {"images": u8[:3].numpy()})


@pytest.mark.parametrize("runtime", [r for r in ("onnxruntime", "openvino") if runtime_status()[r] is None])
def test_detector_runtimes_predict_like_torch(det, runtime):
    images = _real_looking(5, seed=2)
    ref = det.predict(images, batch_size=2)
    det.reset_runtime(runtime)
    try:
        assert det.runtime == runtime
        got = det.predict(images, batch_size=3)
    finally:
        det.reset_runtime("torch")
    _compare(got.heatmaps, got.scores, ref.heatmaps, ref.scores)
    assert torch.equal(got.labels, ref.labels)


def test_auto_runtime_and_reload(det, tmp_path):
    det.save(tmp_path / "m.fastmsfd")
    loaded = Detector.load(tmp_path / "m.fastmsfd")  # runtime="auto": the float32 rule for this CPU
    assert loaded.runtime == choose("auto", torch.device("cpu"), "float32").runtime
    assert loaded.precision == "float32"
    images = _real_looking(3, seed=3)
    _compare(*(lambda p: (p.heatmaps, p.scores))(loaded.predict(images)),
             *(lambda p: (p.heatmaps, p.scores))(det.predict(images)))
    with pytest.raises(ValueError, match="runtime"):
        Detector.load(tmp_path / "m.fastmsfd", runtime="tensorrt")


def test_cli_export(det, tmp_path, capsys):
    det.save(tmp_path / "m.fastmsfd")
    assert main(["export", str(tmp_path / "m.fastmsfd"), "-o", str(tmp_path / "out" / "m.onnx")]) == 0
    assert "wrote" in capsys.readouterr().out
    assert (tmp_path / "out" / "m.onnx").is_file()
    assert not [p for p in (tmp_path / "out").iterdir() if p.name != "m.onnx"]  # no temp file left behind


@pytest.mark.skipif(runtime_status()["openvino"] is not None, reason="openvino not installed")
def test_openvino_reads_the_exported_file(det, tmp_path):
    from fastmsfd.runtimes import openvino_compile

    path = det.export_onnx(tmp_path / "m.onnx")
    # float32 said explicitly: OpenVINO's default is bf16 on CPUs with native bf16 (1% of the heatmap's range)
    compiled = openvino_compile(str(path), "float32")
    u8 = torch.randint(0, 255, (2, 3, SIZE, SIZE), dtype=torch.uint8)
    out = compiled(u8.numpy())
    with torch.no_grad():
        ref_heat, ref_score = det.model(u8)[:2]
    _compare(torch.from_numpy(out[0]), torch.from_numpy(out[1]), ref_heat, ref_score)


class _PaddedConvs(torch.nn.Module):
    """Asymmetric zero pads in front of convolutions (TF "SAME" at stride 2), one pad shared by two convs, and
    a non-zero pad that must stay a Pad."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = torch.nn.Conv2d(3, 4, 5, stride=2)
        self.c = torch.nn.Conv2d(3, 2, 3)

    def forward(self, x):
        p = torch.nn.functional.pad(x, [1, 2, 0, 3])
        q = torch.nn.functional.pad(x, [1, 1, 1, 1], value=0.5)
        return self.a(p).sum((2, 3)) + self.b(p).sum((2, 3)), self.c(q)


def test_fold_pads_keeps_the_function_and_removes_zero_pads(tmp_path):
    import io

    import onnx
    import onnxruntime as ort

    from fastmsfd.onnx_passes import fold_pads

    torch.manual_seed(0)
    net, x = _PaddedConvs().eval(), torch.randn(2, 3, 11, 14)
    buf = io.BytesIO()
    torch.onnx.export(net, (x,), buf, dynamo=False, opset_version=17, input_names=["x"])
    model = onnx.load_from_string(buf.getvalue())
    assert sum(n.op_type == "Pad" for n in model.graph.node) == 2
    assert fold_pads(model) == 1
    assert [n.op_type for n in model.graph.node].count("Pad") == 1  # the 0.5-valued pad stays
    onnx.checker.check_model(model)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()})
    with torch.no_grad():
        want = net(x)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w.numpy(), rtol=1e-5, atol=1e-5)


def test_exported_efficientnet_has_no_pad_ops(det):
    import onnx

    from fastmsfd.export import onnx_bytes

    model = onnx.load_from_string(onnx_bytes(det))
    assert not [n.name for n in model.graph.node if n.op_type == "Pad"]
