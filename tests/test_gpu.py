"""On a CUDA GPU (skipped elsewhere; scripts/gpu_check.sh runs them): the whole detector on the GPU against the
CPU reference with the same weights, torch.compile(fullgraph=True) over the dispatcher, offsets past 2**31
elements, and tensors on a second GPU.

Tolerances: float32 heatmaps within 1e-4 of the heatmap's range and scores within 1e-4 relative, with TF32 off
(only summation order differs between the two devices); bfloat16 on the GPU within 5% of the range (the networks
then compute in bf16; tests/test_detector.py states the same bound on the CPU).
"""
import pytest
import torch

from fastmsfd import Detector, ops

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (scripts/gpu_check.sh)")
SIZE = 96


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("gpu") / "m.fastmsfd"
    det = Detector(image_size=SIZE, weights="random")
    g = torch.Generator().manual_seed(1)
    low = torch.rand(12, 3, 8, 8, generator=g)
    images = (torch.nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bicubic").clamp(0, 1) * 255).byte()
    det.fit(images, epochs=1, batch_size=4, progress=False)
    det.save(path)
    return path


def _images(n=5, seed=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)


@pytest.fixture
def no_tf32():
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


def test_both_gpu_backends_are_available():
    status = ops.backend_status("cuda")
    assert status["cuda"] is None and status["triton"] is None, status


@pytest.mark.parametrize("backend", ["cuda", "triton", "reference"])
def test_detector_on_gpu_matches_cpu_reference(saved, backend, no_tf32):
    cpu = Detector.load(saved, runtime="torch", ops_backend="reference")
    gpu = Detector.load(saved, runtime="torch", device="cuda", ops_backend=backend)
    x = _images()
    want, got = cpu.predict(x), gpu.predict(x)
    assert ops.last_backend()[0] == backend
    scale = want.heatmaps.max().item() - want.heatmaps.min().item()
    assert (got.heatmaps - want.heatmaps).abs().max().item() <= 1e-4 * scale
    torch.testing.assert_close(got.scores, want.scores, rtol=1e-4, atol=1e-4 * scale)


def test_bfloat16_on_gpu_stays_close(saved):
    cpu = Detector.load(saved, runtime="torch")
    gpu = Detector.load(saved, runtime="torch", device="cuda", precision="bfloat16")
    x = _images()
    want, got = cpu.predict(x), gpu.predict(x)
    scale = want.heatmaps.max().item() - want.heatmaps.min().item()
    assert (got.heatmaps - want.heatmaps).abs().max().item() <= 0.05 * scale


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_fullgraph_compile_over_the_dispatcher(backend):
    t = [torch.randn(2, 16, 12, 10, device="cuda"), torch.randn(2, 32, 6, 5, device="cuda")]
    s = [x + 0.1 * torch.randn_like(x) for x in t]

    def heat(t, s):
        return ops.anomaly_map(t, s, (48, 40), backend=backend, topk=0.01)

    got, want = torch.compile(heat, fullgraph=True)(t, s), heat(t, s)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5 * want[0].abs().max().item())


@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_offsets_past_two_to_the_31(backend):
    """One layer whose B*C*h*w passes 2**31 elements: with 32-bit offsets the last images would read wrong data."""
    B, C, h, w = 9, 256, 1024, 1024  # 2.4e9 elements, 4.8 GB each in float16
    if torch.cuda.mem_get_info()[0] < 16e9:
        pytest.skip("needs 16 GB of free GPU memory")
    g = torch.Generator(device="cuda").manual_seed(0)
    t = torch.randn(B, C, h, w, device="cuda", dtype=torch.float16, generator=g)
    s = (t + 0.5).to(torch.float16)
    s[-1, :, -1, -1] = 0  # the very last cell differs from the others
    heat, _ = ops.anomaly_map([t], [s], (h, w), sigmas=[0.5], radii=[0.5], backend=backend)
    want_last = ops.anomaly_map([t[-1:, :, -8:, -8:]], [s[-1:, :, -8:, -8:]], (8, 8), sigmas=[0.5], radii=[0.5],
                                backend="reference")[0][0]
    torch.testing.assert_close(heat[-1, -8:, -8:], want_last, rtol=1e-3, atol=1e-3)
    want_first = ops.anomaly_map([t[:1, :, :8, :8]], [s[:1, :, :8, :8]], (8, 8), sigmas=[0.5], radii=[0.5],
                                 backend="reference")[0][0]
    torch.testing.assert_close(heat[0, :8, :8], want_first, rtol=1e-3, atol=1e-3)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two GPUs")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_tensors_on_the_second_gpu(backend):
    t = [torch.randn(2, 8, 9, 7, device="cuda:1")]
    s = [x + 0.2 for x in t]
    with torch.cuda.device(0):  # the current device is not the tensors'
        got = ops.anomaly_map(t, s, (30, 20), backend=backend)[0]
    want = ops.anomaly_map([t[0].cpu()], [s[0].cpu()], (30, 20), backend="reference")[0]
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5 * want.abs().max().item())
