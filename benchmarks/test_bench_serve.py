"""Load test of `fastmsfd serve` on loopback (fastmsfd/serve/loadtest.py): 8 concurrent clients for a bounded
time; served throughput beside in-process batched throughput of the same model, same run, as a ratio.

    .venv/bin/python -m pytest benchmarks/test_bench_serve.py -s
"""
import warnings

import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install fastmsfd[serve])")

from fastmsfd import Detector  # noqa: E402
from fastmsfd.serve import loadtest  # noqa: E402


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from fastmsfd.data import decode_bytes

    path = tmp_path_factory.mktemp("serve") / "model.fastmsfd"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        det = Detector(image_size=256)  # speed does not depend on training; the threshold comes from normal images
    det.calibrate([decode_bytes(b) for b in loadtest.sample_images(8, seed=1)])
    det.save(path)
    return str(path)


@pytest.mark.parametrize("clients", [1, 8])
def test_served_throughput_vs_in_process(benchmark, model, clients):
    result = benchmark.pedantic(loadtest.run, args=(model, clients, 20.0), rounds=1, iterations=1)
    benchmark.extra_info.update(result)
    print("\n" + loadtest.markdown(result))
    assert result["errors"] == 0 and result["requests"] > 0
