"""Run by test_distributed.py, once alone and once under torchrun with 2 processes.

Each sample appears twice in a row and the order is not shuffled, so with 2 ranks each rank's
half-batch holds exactly the distinct samples of the single process's batch: BN statistics and the
mean gradient are then the same, and so must be the trained weights.
"""

import sys

import torch

from netslim import distributed, models
from netslim.data import Dataset, Loader
from netslim.train import TrainConfig, train


def main(out: str) -> None:
    info = distributed.init_from_env("cpu")
    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 3, (48,), generator=g)
    images = (torch.rand(48, 1, 4, 4, generator=g) * 100 + labels[:, None, None, None] * 50).to(torch.uint8)
    data = Dataset(images.repeat_interleave(2, 0), labels.repeat_interleave(2, 0), 3, (0.5,), (0.25,), "pairs")
    torch.manual_seed(0)
    model = models.create("mlp", widths=[16, 8], input_size=(1, 4, 4), num_classes=3)
    loader = Loader(data, 16 // info.world_size, train=True, shuffle=False, rank=info.rank,
                    world_size=info.world_size)
    config = TrainConfig(epochs=3, batch_size=16, lr=0.05, sparsity=1e-2, bn_init=0.5, progress=False, device="cpu")
    train(model, loader, config, out_dir=f"{out}/run")
    torch.save(model.state_dict(), f"{out}/rank{info.rank}.pt")
    # λ chosen for a target: every rank must use the same λ at every step
    torch.manual_seed(0)
    model = models.create("mlp", widths=[16, 8], input_size=(1, 4, 4), num_classes=3)
    auto = TrainConfig(epochs=3, batch_size=16, lr=0.05, sparsity="auto", bn_init=0.5, progress=False, device="cpu")
    history = train(model, loader, auto)["history"]
    torch.save({"lambda": [[r["sparsity_min"], r["sparsity"], r["sparsity_max"]] for r in history],
                "weights": model.state_dict()}, f"{out}/auto-rank{info.rank}.pt")
    distributed.shutdown()


if __name__ == "__main__":
    main(sys.argv[1])
