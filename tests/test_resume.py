"""Resumable training: a `fastmsfd fit` killed (SIGKILL) or interrupted (SIGINT, Ctrl-C) mid-epoch continues from
its last completed epoch with --resume and ends with the same student as an uninterrupted run, same seed."""
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from fastmsfd import Detector
from fastmsfd.train import STATE_FORMAT

# 8 epochs, interrupted after the 2nd: room for a slow poll of the state file on a loaded machine.
ARGS = ["--image-size", "48", "--epochs", "8", "--batch-size", "4", "--lr", "3e-3", "--seed", "3"]


def _data(root, n=24):
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for i in range(n):
        low = rng.random((5, 5, 3))
        Image.fromarray((low * 255).astype(np.uint8)).resize((48, 48), Image.BICUBIC).save(root / f"{i}.png")
    return root


def _default_sigint():
    # A test run started in the background by a non-interactive shell inherits SIGINT as *ignored* (POSIX), and
    # so would the fit: give the child the default action, as a terminal's Ctrl-C would find it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _fit(data, out, extra=()):
    return subprocess.Popen([sys.executable, "-m", "fastmsfd", "-q", "fit", str(data), "-o", str(out), *ARGS,
                             *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=_default_sigint)


def _epochs_done(state):
    try:
        return int(torch.load(state, weights_only=True)["epoch"])
    except Exception:
        return 0


def _interrupt(data, out, sig):
    state = out.with_name(out.name + ".state")
    proc = _fit(data, out)
    deadline = time.time() + 300
    while _epochs_done(state) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    assert proc.poll() is None, "finished before it could be interrupted"
    time.sleep(0.05)  # inside epoch 3
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=120)
    assert not out.exists() and state.exists()
    return proc.returncode, err, state


def _students_equal(a, b):
    sa, sb = Detector.load(a).model.student.state_dict(), Detector.load(b).model.student.state_dict()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=1e-6, atol=1e-7, msg=k)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    data = _data(root / "data")
    out = root / "straight.fastmsfd"
    proc = _fit(data, out)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    return data, out


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT])
def test_interrupted_fit_resumes_to_the_same_result(reference, tmp_path, sig):
    data, straight = reference
    out = tmp_path / "m.fastmsfd"
    rc, err, state = _interrupt(data, out, sig)
    assert torch.load(state, weights_only=True)["format"] == STATE_FORMAT
    if sig == signal.SIGINT:
        assert rc == 130 and "--resume" in err
    proc = _fit(data, out)  # without --resume: refuses to silently start over
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2 and "--resume" in err
    proc = _fit(data, out, ["--resume"])
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err
    assert not state.exists()
    _students_equal(out, straight)


def test_state_from_other_settings_is_refused(reference, tmp_path):
    data, _ = reference
    out = tmp_path / "m.fastmsfd"
    _interrupt(data, out, signal.SIGKILL)
    proc = subprocess.run([sys.executable, "-m", "fastmsfd", "-q", "fit", str(data), "-o", str(out), "--resume",
                           *ARGS[:-1], "4"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "other settings" in proc.stderr
