"""The MNIST multilayer perceptron of paper Table 3: 784-500-300-10 with BatchNorm1d."""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor, nn


class MLP(nn.Module):
    """Fully connected net; each hidden Linear is followed by BatchNorm1d (whose γ are pruned) and ReLU."""

    def __init__(self, widths: Sequence[int] = (500, 300), num_classes: int = 10,
                 input_size: Sequence[int] = (1, 28, 28)) -> None:
        super().__init__()
        if len(widths) == 0:
            raise ValueError("an MLP needs at least one hidden width")
        self.widths = [int(w) for w in widths]
        self.input_size = tuple(input_size)
        layers: list[nn.Module] = []
        width = math.prod(self.input_size)  # the image is flattened: 28x28 -> 784 inputs
        for w in self.widths:
            layers += [nn.Linear(width, w), nn.BatchNorm1d(w), nn.ReLU(inplace=True)]
            width = w
        self.hidden = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.hidden(x.flatten(1)))
