"""The accuracy benchmark's quick mode runs end to end (so the script cannot rot); no claim is checked."""

import importlib.util
import json
from pathlib import Path

import pytest

pytest.importorskip("sklearn")
FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FMNIST.exists(), reason="needs Debian's dataset-fashion-mnist")
def test_table3_quick(tmp_path):
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy.py"
    spec = importlib.util.spec_from_file_location("accuracy_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["table3", "--quick", "--out", str(tmp_path / "runs"), "--results", str(tmp_path)])
    record = json.loads((tmp_path / "accuracy_table3_quick.json").read_text())
    rows = record["result"]["rows"]
    assert [r["model"] for r in rows] == ["baseline", "pass 1 trained with sparsity",
                                          "pass 1 pruned, before fine-tuning", "pass 1 fine-tuned"]
    assert rows[-1]["params_pruned"] == pytest.approx(0.844, abs=0.01)  # 80% of each hidden layer, as in Table 3
    assert record["machine"]["torch"]
