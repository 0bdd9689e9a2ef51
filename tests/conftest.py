import os

# Triton kernels can only run on this CPU through the interpreter, which must be chosen before any
# @triton.jit function is defined (that is, before fastmsfd.kernels imports).
os.environ.setdefault("TRITON_INTERPRET", "1")

from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_report_header(config):
    return f"torch {torch.__version__}, {torch.get_num_threads()} threads, shared data: {SHARED_DATA.is_dir()}"
