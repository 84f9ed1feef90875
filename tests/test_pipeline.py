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
    # values are checked when the config is read, not after training
    ({"model": "mlp", "prune": {"percent": 1.0}}, r"prune: percent must be a fraction in \[0, 1\)"),
    ({"model": "mlp", "prune": {"percent": 0.5, "min_channels": 0}}, "min_channels must be an integer >= 1"),
    ({"model": "mlp", "prune": {"percent": 0.5, "aggregate": "mean"}}, "aggregate must be max or sum"),
    ({"model": "mlp", "prune": {}}, "give exactly one of percent"),
    ({"model": "mlp", "recalibrate": -1}, "recalibrate must be an integer >= 0"),
    ({"model": "mlp", "train": {"sparsity_kind": "bogus"}}, "sparsity_kind must be l1, smooth_l1 or polarization"),
    ({"model": "mlp", "train": {"momentum": "abc"}}, "momentum must be a number"),
    ({"model": "mlp", "train": {"grad_clip": -1}}, "grad_clip must be a number > 0"),
    ({"model": "mlp", "finetune": {"lr": ".1"}}, "lr must be a number > 0"),
    ({"model": "mlp", "train": {"bn_init": float("nan")}}, "bn_init must be a number > 0"),
    ({"model": "mlp", "train": {"epochs": True}}, "epochs must be an integer"),
    ({"model": "mlp", "distill": 5}, r"distill must be a weight in \[0, 1\]"),
    ({"model": "mlp", "train_subset": -10}, "train_subset must be an integer >= 0"),
    ({"model": "mlp", "val_size": 1.5}, "val_size must be an integer >= 0"),
    ({"model": "", "dataset": "digits"}, "model must be a model name"),
])
def test_bad_configs(raw, message):
    with pytest.raises(ValueError, match=message):
        ExperimentConfig.from_dict(raw)


def _paper_setting(name: str) -> dict:
    """What the paper (Sec. 4.3, Tables 1-4) says a preset reproduces: model, dataset, schedule, λ, pruning."""
    table, rest = name.split("-", 1)
    if table == "table1":
        dataset, model, percent = rest.split("-")
        epochs = 20 if dataset == "svhn" else 160  # "minibatch size 64 for 160 and 20 epochs"
        return dict(model=model, dataset=dataset, epochs=epochs, batch_size=64, milestones=(0.5, 0.75),
                    sparsity=1e-4 if model == "vgg19" else 1e-5, bn_init=0.5, finetune_epochs=epochs,
                    finetune_lr=0.1, prune={"percent": int(percent) / 100})
    if table == "table2":
        return dict(model="vgg11a", dataset="imagenet", epochs=60, batch_size=256, milestones=(1 / 3, 2 / 3),
                    sparsity=1e-5, bn_init=0.5, finetune_epochs=5, finetune_lr=1e-3, prune={"percent": 0.5})
    if table == "table3":
        return dict(model="mlp", dataset="mnist", epochs=30, batch_size=256, milestones=(1 / 3, 2 / 3),
                    finetune_epochs=30, finetune_lr=0.1, prune={"layer_percent": 0.8})
    assert table == "table4", name
    return dict(model="vgg19", dataset=rest.split("-")[0], epochs=160, batch_size=64, milestones=(0.5, 0.75),
                sparsity=1e-4, bn_init=0.5, finetune_epochs=160, finetune_lr=0.1,
                prune={"percent": 0.5, "max_layer_fraction": 0.5})


def _paper_presets() -> list[str]:
    from netslim.pipeline import list_presets

    return [name for name in list_presets() if name.startswith("table")]


def test_there_are_presets_for_every_paper_table():
    assert {name.split("-")[0] for name in _paper_presets()} == {"table1", "table2", "table3", "table4"}


@pytest.mark.parametrize("name", _paper_presets())
def test_presets_follow_the_paper(name):
    """Each paper preset trains the paper's model on the paper's data with the paper's schedule (Sec. 4.3)."""
    paper, config = _paper_setting(name), load_config(name)
    train, finetune = config.train_config(), config.finetune_config()
    assert (config.model, config.dataset.lower()) == (paper["model"], paper["dataset"])
    assert (train.epochs, train.batch_size, train.lr) == (paper["epochs"], paper["batch_size"], 0.1)
    assert train.milestones == pytest.approx(paper["milestones"], abs=1e-3)
    assert (train.momentum, train.nesterov, train.weight_decay, train.optimizer) == (0.9, True, 1e-4, "sgd")
    assert train.sparsity == pytest.approx(paper.get("sparsity", train.sparsity)) and train.sparsity > 0
    assert train.bn_init == paper.get("bn_init", train.bn_init)
    assert (finetune.epochs, finetune.lr, finetune.sparsity) == (paper["finetune_epochs"], paper["finetune_lr"], 0)
    assert {k: v for k, v in config.prune.items() if k != "round_to"} == paper["prune"]
    assert config.prune.get("round_to") == 1  # the paper prunes the exact percent
    assert (config.passes > 1) == name.startswith("table4")
    assert config.val_size == {"cifar10": 5000, "cifar100": 5000, "svhn": 6000}.get(config.dataset, 0)


def test_the_old_mnist_augmentation_name_reads_as_none():
    assert ExperimentConfig.from_dict({"model": "mlp", "dataset": "mnist", "augment": "mnist"}).augment == "none"


def test_yaml_file_config(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"model": "vgg11", "dataset": "cifar10", "prune": {"percent": 0.3}}))
    assert load_config(str(path)).prune == {"percent": 0.3}


@pytest.mark.parametrize("text, message", [("", "is empty"), ("# only a comment\n", "is empty"),
                                           ("a: " + "[" * 3000 + "]" * 3000 + "\n", "nested too deeply"),
                                           ("model: mlp\ntrain_subset: -10\n", "train_subset")])
def test_config_files_that_cannot_be_a_config(text, message, tmp_path):
    (tmp_path / "c.yaml").write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        load_config(str(tmp_path / "c.yaml"))
    assert "validation" not in str(e.value)


def test_every_preset_loads():
    from netslim.pipeline import list_presets

    for name in list_presets():
        load_config(name)


def test_a_run_folder_of_another_config_is_refused_before_anything_is_written(tmp_path):
    run_experiment(_config(), tmp_path, log=lambda *a: None)
    written = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    changed = _config(prune={"percent": 0.3, "max_layer_fraction": 0.5})
    with pytest.raises(ValueError, match=r"prune .*0.5.* \(now .*0.3.*\).*another --out"):
        run_experiment(changed, tmp_path, log=lambda *a: None)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == written  # pruned.pt, plan, config.yaml
    moved = _config(data_dir=str(tmp_path / "elsewhere"), train={**_config().train, "progress": True})
    said = []
    run_experiment(moved, tmp_path, log=said.append)  # where the data is and how it shows: free to change
    assert any(s.startswith(f"{tmp_path / 'pass1' / 'sparse'} already holds all 2 epochs") for s in said)


def test_every_preset_the_readme_names_exists():
    """Every preset the README names exists (it once promised table1-...-{40,50,60,70}: 36 presets, 15 existed)."""
    import itertools
    import re
    from pathlib import Path

    from netslim.pipeline import list_presets

    root = Path(__file__).parents[1]
    readme = "".join(p.read_text() for p in [root / "README.md", *sorted((root / "docs").glob("*.md"))])
    named = set()
    for pattern in re.findall(r"`((?:table\d|fmnist|digits)-[\w{},-]+|demo)`", readme):
        parts = re.split(r"\{([^}]*)\}", pattern)  # literal, choices, literal, ...
        choices = [[p] if k % 2 == 0 else p.split(",") for k, p in enumerate(parts)]
        named.update("".join(c) for c in itertools.product(*choices))
    assert len(named) >= 20
    assert named <= set(list_presets()), sorted(named - set(list_presets()))
