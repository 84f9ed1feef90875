"""benchmarks/fidelity.py's renderer: its records become BENCHMARKS.md's Fashion-MNIST sparsity section
(no training here)."""

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _record(stage: str, result: dict, seed: int = 0) -> dict:
    machine = {"cpu": "cpu", "platform": "linux", "torch": "2", "load_average": [1.0, 1.0, 1.0], "date": "today"}
    return {"benchmark": "fidelity", "stage": stage, "seconds": 60.0, "machine": machine, "result": result,
            "seed": seed, "command": f"python benchmarks/fidelity.py {stage}"}


def _gamma(small: float, safe: float) -> dict:
    return {"gamma_below_1e-2": small, "gamma_below_1e-3": small / 2, "gamma_median": 0.1, "safe_percent": safe}


def _run(lam: float, error: float) -> dict:
    return {"lambda": lam, "epochs": 3, "seconds": 60.0, "test_error": error, "warnings": []}


def _fig5_rows(masked_at_55: float) -> list[dict]:
    return [{"percent": p / 20, "masked": 0.1 if p != 11 else masked_at_55, "compact_carrier": 0.1 if p != 11 else
             masked_at_55, "compact_approximate": 0.3, "compact_exact": 0.9, "fidelity_carrier": 1e-7,
             "fidelity_approximate": 0.2, "fidelity_exact": 0.5, "folds": {"exact": 1, "carrier": 15, "dropped": 0},
             "carriers": 15, "params": 1100, "params_exact": 1000, "flops": 2e6} for p in range(2, 19)]


def test_markdown_renders_every_stage_with_its_spread_over_seeds(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import fidelity
    finally:
        sys.path.remove(str(BENCHMARKS))
    records = {}
    for seed, (base_error, sparse_error, safe) in enumerate([(0.10, 0.105, 0.55), (0.12, 0.115, 0.57)]):
        suffix = f"-seed{seed}" if seed else ""
        records[f"baseline{suffix}"] = _record("baseline", _run(0.0, base_error), seed)
        records[f"sweep-0.004{suffix}"] = _record("sweep", {"rows": [_run(4e-3, sparse_error)]}, seed)
        records[f"select{suffix}"] = _record("select", {"chosen": 4e-3, "baseline_error": base_error,
                                                        "baseline_gamma": _gamma(0.0, 0.0),
                                                        "rows": [{"lambda": 4e-3, "gamma": _gamma(0.7, safe)}]}, seed)
        records[f"figure5{suffix}"] = _record("figure5", {"sparse_error": sparse_error, "recommended": 0.55,
                                                          "gamma": _gamma(0.7, safe),
                                                          "rows": _fig5_rows(sparse_error + 0.005)}, seed)
        records[f"table1{suffix}"] = _record("table1", {"rows": [
            {"percent": p, "recommended": p == 0.55, "error_before_finetune": 0.11, "error": base_error - 0.01,
             "finetune_epochs": 3, "params": 1000, "flops": 2e6} for p in (0.5, 0.55, 0.6, 0.7)]}, seed)
        records[f"scratch{suffix}"] = _record("scratch", {"safe_percent": safe, "baseline_error": base_error,
                                                          "sparse_error": sparse_error, "percent": 0.55, "epochs": 6,
                                                          "error": base_error + 0.02, "params": 1000}, seed)
        records[f"mlp-0.01{suffix}"] = _record("mlp", {
            "lambda": 1e-2, "epochs": 10, "finetune_epochs": 5, "gamma": _gamma(0.9, 0.8), "warnings": [],
            "baseline_30_epochs": {"test_error": 9.87, "params": 547400},
            "rows": [{"model": "pass 1 fine-tuned", "test_error": 9.9 + seed, "params": 85500,
                      "params_pruned": 0.844}]}, seed)
    records["sweep-0.002_quick"] = _record("sweep", {"rows": [_run(2e-3, 0.5)]})  # quick runs are not rendered
    for name, rec in records.items():
        (tmp_path / f"fidelity_{name}.json").write_text(json.dumps(rec))
    text = fidelity.markdown(tmp_path)
    assert "| sparse (chosen) | 0.004 | 3 | 11.00 ± 0.71 | 70.0 ± 0.0 |" in text and "2 seeds" in text
    assert "| 56.0 ± 1.4 |" in text  # the largest safe percent, recomputed per seed
    assert "| 55% ← (2) | 11.50 ± 0.71 | 11.50 ± 0.71 | 30.00 ± 0.00 | 90.00 ± 0.00 | 1e-07 / 0.2 / 0.5 | 15 |" in text
    assert "0.50 ± 0.00 points from the sparse-trained model (largest: +0.50)" in text
    assert "within 1 point on every seed" in text and "NOT within" not in text
    assert "| recommended: 55%, 55% | 11.00 ± 0.00 | 10.00 ± 1.41 | 3 |" in text
    assert "fine-tuned minus baseline: -1.00 ± 0.00 points" in text and "from scratch minus slimmed: 3.00" in text
    assert "| pass 1 fine-tuned | 10.40 ± 0.71 |" in text and "'sparsity is not emerging' warning: none" in text
    assert "0.002" not in text
    rows = {goal.goal.split(":")[0]: goal for goal in fidelity.goals(tmp_path)}
    assert "λ = 0.004: 70.0 ± 0.0% of |γ| below 1e-2, 11.00 ± 0.71% test error" in rows[
        "sparsity emerges at a λ that costs little accuracy (paper Sec. 4.3, Fig. 4)"].figure
    assert rows["paper Table 1"].figure == "fine-tuned minus baseline: -1.00 ± 0.00 points"
    assert not any(key.startswith("target sparsity") for key in rows)  # no target records: no row
