import pytest
import torch

from netslim import count_flops, count_params, models

SMALL = [n for n in models.names() if n not in ("vgg11a",)]


@pytest.mark.parametrize("name", SMALL)
def test_forward_backward_every_parameter_gets_a_gradient(name):
    model = models.create(name, num_classes=7)
    x = torch.randn(4, *model.input_size)
    out = model(x)
    assert out.shape == (4, 7)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_vgg_a_forward_at_imagenet_size():
    model = models.create("vgg11a").eval()
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="vgg19"):
        models.create("vgg20")


def test_unknown_argument_is_a_clear_error():
    with pytest.raises(ValueError, match="does not take depth"):
        models.create("vgg19", depth=3)


@pytest.mark.parametrize("name, widths", [("vgg19", [1] * 3), ("resnet164", [16] * 5), ("densenet40", [1]),
                                          ("vgg11a", [8] * 9)])
def test_width_config_of_wrong_length(name, widths):
    with pytest.raises(ValueError, match="width config"):
        models.create(name, widths=widths)


# Paper Table 1 (a) CIFAR-10, (b) CIFAR-100, Table 3 (MNIST), Table 2 (ImageNet params).
PAPER = [
    ("vgg19", 10, 20.04e6, 7.97e8), ("vgg19", 100, 20.08e6, 7.97e8),
    ("densenet40", 10, 1.02e6, 5.33e8), ("densenet40", 100, 1.06e6, 5.33e8),
    ("resnet164", 10, 1.70e6, 4.99e8), ("resnet164", 100, 1.73e6, 5.00e8),
]


@pytest.mark.parametrize("name, classes, params, flops", PAPER)
def test_counts_match_the_paper_within_one_percent(name, classes, params, flops):
    model = models.create(name, num_classes=classes)
    assert count_params(model) == pytest.approx(params, rel=0.01)
    assert count_flops(model) == pytest.approx(flops, rel=0.01)


def test_vgg_a_and_mlp_parameter_counts():
    assert count_params(models.create("vgg11a")) == pytest.approx(132.9e6, rel=0.01)
    mlp = models.create("mlp")
    linear = 784 * 500 + 500 + 500 * 300 + 300 + 300 * 10 + 10
    assert count_params(mlp) == linear + 2 * (500 + 300)  # plus BN scale and shift


def test_flops_count_two_per_multiply_add():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1, bias=False))
    assert count_flops(model, (3, 10, 10)) == 2 * 8 * 3 * 9 * 100


def test_missing_input_size_is_a_clear_error():
    with pytest.raises(ValueError, match="input_size"):
        count_flops(torch.nn.Linear(3, 3))
