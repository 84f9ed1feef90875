import pytest
import torch

from netslim.testing import randomize_bn  # noqa: F401  (one definition; tests import it from here too)

# One intra-op thread: the models here are small, and several test processes (torchrun workers, the
# crash test's trainer) share the cores; oversubscribed OpenMP threads slow such runs many-fold.
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
