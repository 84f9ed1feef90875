"""Pictures of a run (matplotlib, optional): the paper's Figures 3, 4 and 6, and per-layer widths."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

from .checkpoint import load_checkpoint
from .runfolder import OutputRefused, check_output, write_atomic


def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plots need matplotlib: pip install 'netslim[plot]'") from None
    return plt


def write_report(run_dir: Path) -> list[Path]:
    """Write PNGs into ``run_dir/report`` from the run's checkpoints, plans and results."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{run_dir} is a file, not a run folder: give the folder `netslim run` or `netslim train` "
                         f"wrote (e.g. {run_dir.parent})")
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {run_dir} does not exist")
    stages = sorted(p.parent for p in run_dir.glob("**/last.pt"))
    if not stages:
        raise ValueError(f"{run_dir} holds no training stage (no last.pt): run `netslim run` or `netslim train` first")
    histories = {str(s.relative_to(run_dir)): _history(s / "last.pt") for s in stages}
    histories = {name: h for name, h in histories.items() if h["history"]}
    if not histories:
        raise ValueError(f"{run_dir} holds no training history (its last.pt files record no epoch)")
    plans = {path: _plan(path) for path in sorted(run_dir.glob("pass*/plan.json"))}
    plt = _pyplot()
    out = run_dir / "report"
    if out.is_symlink() or out.exists() and not out.is_dir():
        raise OutputRefused(f"{out} is a link or a file, not the report folder: netslim does not write through "
                            "links; remove it and run again")
    names = ["gamma_distribution.png", "gamma_heatmap.png", "sparsity_progress.png", "savings.png",
             *(f"widths_{path.parent.name}.png" for path in plans)]
    for name in names:  # before anything is drawn: the report's own files, replaced but never through a link
        check_output(out / name, overwrite=True)
    written = []

    # Fig. 4: distribution of |γ| at the end of each training stage.
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ckpt in histories.items():
        scales = torch.cat([g[-1] for g in ckpt["gammas"].values()]) if ckpt["gammas"] else torch.zeros(0)
        if len(scales):
            ax.hist(scales.numpy(), bins=60, histtype="step", label=name)
    ax.set(xlabel="|γ| (BN scaling factor)", ylabel="channels", title="Distribution of scaling factors (paper Fig. 4)")
    ax.legend(fontsize=7)
    written.append(_save(fig, out / "gamma_distribution.png"))

    # Fig. 6: |γ| of one layer along training (the sparse stage of pass 1, its middle BN layer).
    sparse = next((c for n, c in histories.items() if n.endswith("sparse")), next(iter(histories.values())))
    if sparse["gammas"]:
        layers = list(sparse["gammas"])
        layer = layers[min(len(layers) - 1, len(layers) * 2 // 3)]
        fig, ax = plt.subplots(figsize=(7, 4))
        image = ax.imshow(sparse["gammas"][layer].T.numpy(), aspect="auto", cmap="viridis", interpolation="nearest")
        ax.set(xlabel="epoch", ylabel="channel", title=f"|γ| of {layer} along training (paper Fig. 6)")
        fig.colorbar(image, ax=ax)
        written.append(_save(fig, out / "gamma_heatmap.png"))

    # Sparsity progress: fraction of small |γ| per epoch, for every stage.
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ckpt in histories.items():
        epochs = [r["epoch"] for r in ckpt["history"]]
        ax.plot(epochs, [r.get("gamma_below_1e-2", 0) for r in ckpt["history"]], label=name)
    ax.set(xlabel="epoch", ylabel="fraction of |γ| < 1e-2", title="Is sparsity emerging?")
    ax.legend(fontsize=7)
    written.append(_save(fig, out / "sparsity_progress.png"))

    # Channels per layer before/after pruning, for each pass.
    for plan_path, plan in plans.items():
        names = list(plan["layers"])
        fig, ax = plt.subplots(figsize=(max(6, len(names) * 0.25), 4))
        x = range(len(names))
        ax.bar(x, [plan["layers"][n]["width"] for n in names], color="lightgray", label="before")
        ax.bar(x, [plan["layers"][n]["kept"] for n in names], color="tab:blue", label="after")
        ax.set_xticks(list(x), names, rotation=90, fontsize=6)
        ax.set(ylabel="channels", title=f"Channels per layer, {plan_path.parent.name}")
        ax.legend()
        written.append(_save(fig, out / f"widths_{plan_path.parent.name}.png"))

    # Fig. 3: parameter and FLOP savings of each result row.
    results = run_dir / "results.json"
    if results.exists():
        rows = [r for r in _rows(results) if r["params_pruned"] or r["flops_pruned"]]
        if rows:
            fig, ax = plt.subplots(figsize=(7, 4))
            x = torch.arange(len(rows)).numpy()
            ax.bar(x - 0.2, [100 * r["params_pruned"] for r in rows], 0.4, label="parameters pruned")
            ax.bar(x + 0.2, [100 * r["flops_pruned"] for r in rows], 0.4, label="FLOPs pruned")
            ax.set_xticks(list(x), [r["model"] for r in rows], rotation=20, fontsize=7, ha="right")
            ax.set(ylabel="%", title="Savings (paper Fig. 3)")
            ax.legend()
            written.append(_save(fig, out / "savings.png"))
    return written


def _history(path: Path) -> dict:
    """The epochs and γ history of a ``last.pt`` (empty for a checkpoint that records none)."""
    ckpt = load_checkpoint(path)
    history, gammas = ckpt.get("history"), ckpt.get("gammas")
    if not isinstance(history, list) or not all(isinstance(r, dict) and isinstance(r.get("epoch"), int)
                                                for r in history):
        history = []
    if not isinstance(gammas, dict) or not all(torch.is_tensor(g) and g.dim() == 2 for g in gammas.values()):
        gammas = {}
    return {"history": history, "gammas": gammas}


def _plan(path: Path) -> dict:
    """A plan.json as plain data, checked to be a pruning plan."""
    from .plan import PruningPlan

    try:
        plan = PruningPlan.from_dict(json.loads(path.read_text())).to_dict()
    except (OSError, ValueError, RecursionError) as e:
        raise ValueError(f"{path} is not a pruning plan: {str(e).splitlines()[0] if str(e) else e!r}") from None
    return plan


def _rows(path: Path) -> list[dict]:
    keys = ("model", "params_pruned", "flops_pruned")
    try:
        rows = json.loads(path.read_text())["rows"]
        if isinstance(rows, list) and all(isinstance(r, dict) and all(k in r for k in keys) for r in rows):
            return rows
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        pass
    raise ValueError(f"{path} is not a netslim results file (rows of model, params_pruned, flops_pruned)")


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    image = io.BytesIO()
    fig.savefig(image, dpi=110, format="png")
    write_atomic(path, image.getbuffer())
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
