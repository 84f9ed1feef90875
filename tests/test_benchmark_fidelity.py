"""benchmarks/fidelity.py's renderer: its records become BENCHMARKS.md's issue-19 section (no training here)."""

import json
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def _record(stage: str, result: dict) -> dict:
    machine = {"cpu": "cpu", "platform": "linux", "torch": "2", "load_average": [1.0, 1.0, 1.0], "date": "today"}
    return {"benchmark": "fidelity", "stage": stage, "seconds": 60.0, "machine": machine, "result": result,
            "command": f"python benchmarks/fidelity.py {stage}"}


def _run(lam: float, error: float, small: float) -> dict:
    return {"lambda": lam, "epochs": 3, "seconds": 60.0, "test_error": error, "warnings": [], "gamma_below_1e-2": small,
            "gamma_below_1e-3": small / 2, "gamma_median": 0.1, "safe_percent": 0.8}


def test_markdown_renders_every_stage(tmp_path):
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import fidelity
    finally:
        sys.path.remove(str(BENCHMARKS))
    gamma = {"safe_percent": 0.62, "gamma_below_1e-2": 0.7, "gamma_below_1e-3": 0.5, "gamma_median": 0.004}
    fig5 = [{"percent": p / 10, "masked": 0.1, "compact_approximate": 0.1, "compact_exact_only": 0.9,
             "fidelity_approximate_vs_masked": 1e-3, "fidelity_exact_only_vs_masked": 0.5,
             "folds": {"exact": 1, "approximate": 15, "dropped": 0}, "params": 1000, "flops": 2e6, "guarded": 0}
            for p in range(1, 10)]
    records = {
        "baseline": _record("baseline", _run(0.0, 0.1, 0.0)),
        "sweep-0.004": _record("sweep", {"rows": [_run(4e-3, 0.105, 0.7)]}),
        "select": _record("select", {"chosen": 4e-3, "baseline_error": 0.1, "rows": []}),
        "figure5": _record("figure5", {"sparse_error": 0.105, "gamma": gamma, "rows": fig5}),
        "table1-60": _record("table1", {"rows": [{"percent": 0.6, "error_before_finetune": 0.11, "error": 0.1,
                                                  "finetune_epochs": 2, "params": 1000, "flops": 2e6}]}),
        "scratch": _record("scratch", {"safe_percent": 0.62, "baseline_error": 0.1, "sparse_error": 0.105,
                                       "percent": 0.6, "epochs": 5, "error": 0.12, "params": 1000}),
        "mlp-0.01": _record("mlp", {"lambda": 1e-2, "epochs": 10, "finetune_epochs": 5, "gamma": gamma, "warnings": [],
                               "baseline_30_epochs": {"test_error": 9.87, "params": 547400},
                               "rows": [{"model": "pass 1 fine-tuned", "test_error": 9.9, "params": 85500,
                                         "params_pruned": 0.844}]}),
        "sweep-0.002_quick": _record("sweep", {"rows": [_run(2e-3, 0.5, 0.0)]}),  # quick runs are not rendered
    }
    for name, rec in records.items():
        (tmp_path / f"fidelity_{name}.json").write_text(json.dumps(rec))
    text = fidelity.markdown(tmp_path)
    assert "| sparse (chosen) | 0.004 | 3 | 10.50 | 70.0% |" in text and r"| \|γ\| < 1e-2 |" in text
    assert "| 60% ← | 10.00 | 10.00 | 90.00 |" in text  # the largest safe percent (62%) marks the 60% row
    assert "| 60% | 11.00 | 10.00 | 2 |" in text and "From scratch: the 60% compact architecture" in text
    assert "λ = 0.01" in text and "'sparsity is not emerging' warning: none" in text
    assert "0.002" not in text
