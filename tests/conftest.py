import os

import pytest
import torch

# One intra-op thread: the suite's tensors are small, so a second thread only adds
# synchronization, and it stalls badly when CI's two cores are shared with other work.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture(autouse=True, scope="session")
def _samplegrad_home(tmp_path_factory):
    """Caches and trained checkpoints go to a temporary SAMPLEGRAD_HOME, never the user's
    cache or the checkout (the working directory is left alone)."""
    home = tmp_path_factory.mktemp("samplegrad_home")
    old = os.environ.get("SAMPLEGRAD_HOME")
    os.environ["SAMPLEGRAD_HOME"] = str(home)
    yield home
    if old is None:
        os.environ.pop("SAMPLEGRAD_HOME", None)
    else:
        os.environ["SAMPLEGRAD_HOME"] = old
