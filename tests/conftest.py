import pytest
import torch

# One intra-op thread: the suite's tensors are small, so a second thread only adds
# synchronization, and it stalls badly when CI's two cores are shared with other work.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
