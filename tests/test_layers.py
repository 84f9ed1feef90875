"""The helpers that walk any model: its BN layers, its device, eval mode put back."""

import pytest
import torch
from torch import nn

from netslim.layers import batch_norms, device_of, evaluating


def test_batch_norms_finds_every_subclass_and_filters_affine():
    class MyBN(nn.BatchNorm2d):
        pass

    model = nn.Sequential(nn.Conv2d(3, 4, 1), MyBN(4), nn.BatchNorm1d(4, affine=False), nn.LayerNorm(4))
    assert list(batch_norms(model)) == ["1", "2"]
    assert list(batch_norms(model, affine_only=True)) == ["1"]


def test_device_of_falls_back_to_buffers_then_cpu():
    assert device_of(nn.Linear(2, 2).to("meta")) == torch.device("meta")
    assert device_of(nn.BatchNorm1d(2, affine=False).to("meta")) == torch.device("meta")
    assert device_of(nn.ReLU()) == torch.device("cpu")


@pytest.mark.parametrize("training", [True, False])
def test_evaluating_restores_the_mode_even_on_error(training):
    model = nn.Sequential(nn.BatchNorm1d(2)).train(training)
    with pytest.raises(RuntimeError), evaluating(model):
        assert not model.training and not model[0].training
        raise RuntimeError("boom")
    assert model.training == model[0].training == training
