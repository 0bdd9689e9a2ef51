"""End-to-end speed (uint8 images at image_size -> heatmaps, scores), each fastmsfd runtime beside the naive
eager pipeline (fastmsfd/bench.py: float32, NCHW, full backbone, reference ops) on the same inputs, same run.

    .venv/bin/python -m pytest benchmarks/test_bench_e2e.py --benchmark-group-by=param:backbone
`fastmsfd bench` prints the same comparison as a table (latency, throughput, decode included).
"""
import warnings

import pytest
import torch

from fastmsfd import Detector
from fastmsfd.backbones import find_weights_file
from fastmsfd.bench import NaivePipeline
from fastmsfd.config import ScoreSettings
from fastmsfd.runtimes import runtime_status

SIZE, BATCH = 256, 8
STATUS = runtime_status()


def _weights(backbone):
    return None if find_weights_file(backbone) else "random"  # speed does not depend on the weights


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (BATCH, 3, SIZE, SIZE), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", "resnet18"])
@pytest.mark.parametrize("pipeline", ["naive", "torch", "onnxruntime", "openvino"])
def test_end_to_end(benchmark, images, backbone, pipeline):
    if pipeline not in ("naive", "torch") and STATUS[pipeline]:
        pytest.skip(STATUS[pipeline])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if pipeline == "naive":
            run = NaivePipeline(backbone, SIZE)
        else:
            det = Detector(backbone, image_size=SIZE, weights=_weights(backbone), runtime=pipeline).eval()
            run = det.infer
    benchmark.extra_info["images_per_round"] = BATCH
    with torch.no_grad():
        heat, score = benchmark(run, images)
    assert heat.shape == (BATCH, SIZE, SIZE) and torch.isfinite(score).all()


@pytest.mark.parametrize("global_layer", [None, "auto"])
@pytest.mark.parametrize("pipeline", ["torch", "onnxruntime", "openvino"])
def test_global_branch_cost(benchmark, images, pipeline, global_layer):
    """The same Lite0 detector with and without the global branch (group by param:pipeline to compare)."""
    if pipeline != "torch" and STATUS[pipeline]:
        pytest.skip(STATUS[pipeline])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector("efficientnet_lite0", image_size=SIZE, weights=_weights("efficientnet_lite0"),
                       runtime=pipeline, score=ScoreSettings(global_layer=global_layer)).eval()
    benchmark.extra_info["images_per_round"] = BATCH
    with torch.no_grad():
        heat, score = benchmark(det.infer, images)
    assert heat.shape == (BATCH, SIZE, SIZE) and torch.isfinite(score).all()
