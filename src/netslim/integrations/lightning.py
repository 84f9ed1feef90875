"""A Lightning callback that trains sparse (paper Eq. 1) with :func:`netslim.sparsify`.

    from netslim.integrations.lightning import SparsityCallback
    trainer = Trainer(max_epochs=160, callbacks=[SparsityCallback(target=0.5)])   # or lam=1e-4, fixed

The term is attached to the trainer's optimizer when training starts and removed when it ends; λ
follows the schedule epoch by epoch, and the "is sparsity happening" statistics are logged every
epoch as ``sparsity/<name>``. Lightning passes a closure (forward, backward, clipping) to
``optimizer.step``: the term is added right after it, on the gradients the optimizer then uses, so
under AMP (``precision="16-mixed"``), gradient clipping, ``accumulate_grad_batches`` and DDP the
order of operations is :class:`netslim.Sparsity`'s. Imports ``lightning.pytorch``, else
``pytorch_lightning``.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..sparsity import Sparsity, sparsify

try:
    import lightning.pytorch as pl
except ImportError:  # the standalone package
    try:
        import pytorch_lightning as pl
    except ImportError:
        raise ImportError("netslim.integrations.lightning needs Lightning: pip install lightning (or "
                          "pytorch-lightning; both are in netslim's zoo extra)") from None


class SparsityCallback(pl.Callback):
    """λ·Σ|γ| over the BN scales of the LightningModule, on the optimizer ``optimizer_index`` of the trainer.

    Arguments as :func:`netslim.sparsify`: ``target=0.5`` lets netslim choose λ over the trainer's
    ``estimated_stepping_batches`` (accumulation included); the λ schedule runs over ``trainer.max_epochs``.
    ``log_stats``: log :meth:`netslim.Sparsity.stats` at the end of every training epoch.
    """

    def __init__(self, lam: float | None = None, kind: str = "l1", *, target: float | None = None, by: float = 2 / 3,
                 schedule: str = "constant", warmup: float = 0.1,
                 include: Sequence[str] = ("*",), exclude: Sequence[str] = (), proximal: bool | None = None,
                 optimizer_index: int = 0, log_stats: bool = True, **options: float) -> None:
        super().__init__()
        self.lam, self.kind, self.schedule, self.warmup = lam, kind, schedule, warmup
        self.target, self.by = target, by
        self.include, self.exclude, self.proximal, self.options = tuple(include), tuple(exclude), proximal, options
        self.optimizer_index, self.log_stats = optimizer_index, log_stats
        self.sparsity: Sparsity | None = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epochs = trainer.max_epochs if trainer.max_epochs is not None and trainer.max_epochs > 0 else None
        if self.schedule != "constant" and epochs is None:
            raise ValueError(f"the λ schedule {self.schedule!r} needs Trainer(max_epochs=...)")
        steps = trainer.estimated_stepping_batches  # optimizer steps of the whole fit (inf when unbounded)
        steps = int(steps) if isinstance(steps, int | float) and 0 < steps < float("inf") else None
        self.sparsity = sparsify(pl_module, trainer.optimizers[self.optimizer_index], self.lam, self.kind,
                                 target=self.target, by=self.by, steps=steps, schedule=self.schedule, epochs=epochs,
                                 warmup=self.warmup, include=self.include, exclude=self.exclude,
                                 proximal=self.proximal, **self.options)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sparsity is not None:
            self.sparsity.set_epoch(trainer.current_epoch)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.sparsity is not None and self.log_stats:
            # the same values on every rank (DDP keeps γ identical), so no reduction across ranks is needed
            stats = {f"sparsity/{k}": float(v) for k, v in self.sparsity.stats().items()}
            pl_module.log_dict(stats, on_step=False, on_epoch=True, sync_dist=False, rank_zero_only=True)

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._remove()

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        self._remove()

    def _remove(self) -> None:
        if self.sparsity is not None:
            self.sparsity.remove()
            self.sparsity = None
