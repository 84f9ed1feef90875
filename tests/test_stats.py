"""The |γ| statistics logged during sparsity training: the largest safe percent."""

import torch

from netslim.stats import SAFE_SHARE, scale_stats


def test_safe_percent_is_zero_without_sparsity():
    """Scales spread like an unregularized network's: any removed channel carries real signal."""
    g = torch.Generator().manual_seed(0)
    stats = scale_stats({"a": 0.5 + torch.rand(16, generator=g), "b": 0.5 + torch.rand(32, generator=g)})
    assert stats["safe_percent"] == 0
    assert stats["max_percent"] > 0.3  # the layer guard is a separate figure


def test_safe_percent_counts_the_near_zero_mass_of_a_bimodal_distribution():
    """Half of each layer near zero (the paper's Fig. 4 after sparsity training): exactly that half is safe."""
    a = torch.cat([torch.full((8,), 1e-4), torch.full((8,), 0.5)])
    b = torch.cat([torch.full((24,), 1e-4), torch.full((8,), 0.8)])
    stats = scale_stats({"a": a, "b": b})
    assert stats["safe_percent"] == 32 / 48
    assert stats["max_percent"] == (32 + 8 - 1) / 48  # one channel of layer a stays


def test_the_weakest_layer_bounds_the_global_ratio():
    """A layer whose small scales still carry more than SAFE_SHARE of its Σγ² stops the global ratio below them."""
    strong = torch.cat([torch.full((8,), 1e-4), torch.full((8,), 1.0)])
    weak = torch.tensor([0.02, 0.03, 0.04, 0.05])  # all similar: none can go without losing > 0.1% of Σγ²
    assert (0.02 ** 2) / float((weak ** 2).sum()) > SAFE_SHARE
    stats = scale_stats({"strong": strong, "weak": weak})
    assert stats["safe_percent"] == 8 / 20  # the 1e-4 channels go, 0.02 is not reached
    # shrunk as a whole below everything else: the rule is relative to each layer, so the global ratio
    # stops at the first channel of that layer (conservative: its channels are not 'near zero' for it)
    assert scale_stats({"strong": strong, "weak": weak * 1e-3})["safe_percent"] == 0
