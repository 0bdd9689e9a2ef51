"""`fastmsfd export --format triton`: a model repository for NVIDIA Triton Inference Server. The server binary is
not available here, so the repository is validated, not served: the config parses as Triton's ModelConfig
(the protobuf shipped with tritonclient), its names, shapes and dtypes match the ONNX graph, and ONNX Runtime
runs the file like the Detector (1e-4 of the heatmap's magnitude, scores 1e-4 relative)."""
import numpy as np
import pytest
import torch

from fastmsfd import Detector
from fastmsfd.cli import main

from .test_export import SIZE, _compare, _real_looking

onnx = pytest.importorskip("onnx", reason="onnx not installed")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed")
model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                       reason="tritonclient not installed (pip install tritonclient[grpc])")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    det = Detector(image_size=SIZE, runtime="torch")
    det.calibrate(_real_looking(6), quantile=0.9)
    path = tmp_path_factory.mktemp("triton") / "part.fastmsfd"
    det.save(path)
    return path, Detector.load(path, runtime="torch")


def _parse(text: str):
    from google.protobuf import text_format

    return text_format.Parse(text, model_config_pb2.ModelConfig())


ONNX_TO_TRITON = {onnx.TensorProto.UINT8: "TYPE_UINT8", onnx.TensorProto.FLOAT: "TYPE_FP32",
                  onnx.TensorProto.INT64: "TYPE_INT64"}


def test_cli_writes_a_repository_that_parses_and_matches_the_graph(model, tmp_path, capsys):
    path, det = model
    repo = tmp_path / "repo"
    assert main(["export", str(path), "-o", str(repo), "--format", "triton", "--name", "part7",
                 "--max-batch", "4"]) == 0
    assert "config.pbtxt" in capsys.readouterr().out
    cfg = _parse((repo / "part7" / "config.pbtxt").read_text())
    assert cfg.name == "part7" and cfg.platform == "onnxruntime_onnx" and cfg.max_batch_size == 4
    assert cfg.HasField("dynamic_batching") and max(cfg.dynamic_batching.preferred_batch_size) == 4
    params = {k: v.string_value for k, v in cfg.parameters.items()}
    assert float(params["threshold"]) == pytest.approx(float(det.threshold))
    assert "RGB" in params["input_format"] and str(SIZE) in params["resize"]

    graph = onnx.load(str(repo / "part7" / "1" / "model.onnx"))
    onnx.checker.check_model(graph)

    def spec(v):  # (name, Triton dtype, dims without the batch dimension)
        t = v.type.tensor_type
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
        assert dims[0] == -1, f"{v.name}: the batch dimension must be dynamic for Triton's batching"
        return v.name, ONNX_TO_TRITON[t.elem_type], dims[1:]

    def declared(t):
        dtype = model_config_pb2.DataType.Name(t.data_type)
        dims = list(t.reshape.shape) if t.HasField("reshape") else list(t.dims)
        return t.name, dtype, dims

    assert [declared(t) for t in cfg.input] == [spec(v) for v in graph.graph.input]
    assert [declared(t) for t in cfg.output] == [spec(v) for v in graph.graph.output]
    assert list(cfg.input[0].dims) == [3, SIZE, SIZE] and cfg.input[0].data_type == model_config_pb2.TYPE_UINT8


def test_onnx_runtime_runs_the_repository_model_like_the_detector(model, tmp_path):
    from fastmsfd.data import to_u8_batch
    from fastmsfd.triton_repo import write_triton_repository

    _, det = model
    folder = write_triton_repository(det, tmp_path / "repo", "m", max_batch_size=8)
    sess = ort.InferenceSession(str(folder / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    u8, _, _ = to_u8_batch(_real_looking(5, seed=3), SIZE)
    heat, score = sess.run(["heatmap", "score"], {"images": u8.numpy()})
    ref = det.predict(u8)
    _compare(torch.from_numpy(heat), torch.from_numpy(score), ref.heatmaps, ref.scores)
    assert np.array_equal(score > float(det.threshold), ref.labels.numpy())


def test_rewriting_replaces_the_model_whole_and_bad_names_are_refused(model, tmp_path):
    from fastmsfd.triton_repo import write_triton_repository

    _, det = model
    repo = tmp_path / "repo"
    write_triton_repository(det, repo, "m", max_batch_size=2)
    (repo / "m" / "stale.txt").write_text("from an older export")
    write_triton_repository(det, repo, "m", max_batch_size=8)
    assert sorted(p.name for p in (repo / "m").iterdir()) == ["1", "config.pbtxt"]
    assert _parse((repo / "m" / "config.pbtxt").read_text()).max_batch_size == 8
    assert sorted(p.name for p in repo.iterdir()) == ["m"]  # no staging folders left behind
    with pytest.raises(ValueError, match="model name"):
        write_triton_repository(det, repo, "../escape")
    with pytest.raises(ValueError, match="max_batch_size"):
        write_triton_repository(det, repo, "m", max_batch_size=0)
