import json

import pytest
import yaml

from netslim.pipeline import ExperimentConfig, load_config, run_experiment

pytest.importorskip("sklearn")  # the embedded digits dataset


def _config(**overrides):
    base = dict(model="mlp", dataset="digits", model_kwargs={"widths": [64, 32]}, baseline=False,
                train={"epochs": 2, "batch_size": 64, "lr": 0.1, "sparsity": 1e-2, "bn_init": 0.5, "progress": False},
                finetune={"epochs": 1}, prune={"percent": 0.5, "max_layer_fraction": 0.5})
    return ExperimentConfig.from_dict({**base, **overrides})


def test_multi_pass_shrinks_every_pass_and_resumes_without_retraining(tmp_path):
    rows = run_experiment(_config(passes=3), tmp_path, log=lambda *a: None)["rows"]
    finetuned = [r for r in rows if r["model"].endswith("fine-tuned")]
    assert len(finetuned) == 3
    params = [r["params"] for r in finetuned]
    assert params[0] > params[1] > params[2]
    logs = {p: p.read_text() for p in tmp_path.glob("**/metrics.jsonl")}
    again = run_experiment(_config(passes=3), tmp_path, log=lambda *a: None)["rows"]
    assert again == rows  # finished stages are resumed, not retrained
    assert {p: p.read_text() for p in tmp_path.glob("**/metrics.jsonl")} == logs
    table = (tmp_path / "results.md").read_text()
    assert "| pass 3 fine-tuned |" in table and "Test error (%)" in table


def test_recalibration_and_distillation_options(tmp_path):
    rows = run_experiment(_config(recalibrate=5, distill=0.5, train_subset=600), tmp_path, log=lambda *a: None)["rows"]
    assert any(r["model"] == "pass 1 pruned, BN re-estimated" for r in rows)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["distill"] == 0.5


@pytest.mark.parametrize("raw, message", [
    ({"model": "mlp", "dataset": "digits", "learning_rate": 1}, "unknown config key"),
    ({"model": "mlp", "train": {"epoch": 3}}, "unknown train option"),
    ({"model": "mlp", "train": {"epochs": 0}}, "epochs"),
    ({"model": "mlp", "prune": {"percent": 0.5, "ratio": 1}}, "unknown prune option"),
    ({"model": "mlp", "passes": 0}, "passes"),
    ({"model": "mlp", "train": 3}, "must be a mapping"),
])
def test_bad_configs(raw, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_dict(raw)


@pytest.mark.parametrize("name", ["demo", "table1-cifar10-vgg19-70", "table2-imagenet-vgg11a-50", "table3-mnist-mlp",
                                  "table4-cifar100-vgg19-multipass", "fmnist-vgg"])
def test_presets_load(name):
    config = load_config(name)
    assert config.train_config().epochs >= 1


def test_yaml_file_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "vgg11", "dataset": "cifar10", "prune": {"percent": 0.3}}))
    assert load_config(str(path)).prune == {"percent": 0.3}
