"""torchrun with 2 CPU processes (gloo) trains the same student as one process with the same global batch and
seed. Adam turns float-summation noise in near-zero gradients into +-lr steps, so the comparison uses a small
learning rate: parameters within a few lr of each other, held-out losses within 1e-4 relative. Without the
global-batch BatchNorm (SyncBatchNorm2d) the running statistics alone would differ by ~1e-2."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from fastmsfd import Detector
from fastmsfd.distributed import SyncBatchNorm2d, to_plain_bn, to_sync_bn

LR = 1e-5
# the previous map layers: at 48 px the default stage5-6 maps are 3x3 and 2x2, and the tolerance below was derived
# for the weights and BatchNorm statistics of stages 1-4
ARGS = ["--image-size", "48", "--epochs", "2", "--batch-size", "8", "--lr", str(LR), "--seed", "3",
        "--runtime", "torch", "--layers", "stage2,stage3,stage4", "--global-layer", "none"]


def _data(root, n=26):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        Image.fromarray((rng.random((5, 5, 3)) * 255).astype(np.uint8)).resize((48, 48), Image.BICUBIC).save(
            root / f"{i}.png")
    return root


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(cmd, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")  # the same thread count in every process
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_torchrun_two_processes_match_one(tmp_path):
    data = _data(tmp_path / "data")
    _run([sys.executable, "-m", "fastmsfd", "-q", "fit", str(data), "-o", "one.fastmsfd", *ARGS], tmp_path)
    _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={_free_port()}",
          "--master_addr=127.0.0.1", "-m", "fastmsfd", "-q", "fit", str(data), "-o", "two.fastmsfd", *ARGS], tmp_path)
    one, two = Detector.load(tmp_path / "one.fastmsfd"), Detector.load(tmp_path / "two.fastmsfd")
    a, b = one.model.student.state_dict(), two.model.student.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k].float(), a[k].float(), rtol=0, atol=8 * LR + 1e-6, msg=k)
    assert one.config["n_train"] == two.config["n_train"]
    assert float(two.threshold) == pytest.approx(float(one.threshold), rel=1e-4)


def test_sync_bn_swap_keeps_state_dict():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4, eps=1e-3, momentum=0.1))
    net[1].running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    to_sync_bn(net)
    assert isinstance(net[1], SyncBatchNorm2d) and net[1].eps == 1e-3 and net[1].momentum == 0.1
    to_plain_bn(net)
    assert type(net[1]) is torch.nn.BatchNorm2d
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
