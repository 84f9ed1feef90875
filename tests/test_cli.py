import ast
import importlib.util
import json
import random
from pathlib import Path

import pytest
import torch

import netslim.cli
from netslim.cli import main

pytest.importorskip("sklearn")  # the embedded digits dataset


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_info_json_gives_params_flops_widths(capsys):
    code, out, _ = run(capsys, "info", "vgg19", "--json")
    info = json.loads(out)
    assert code == 0 and info["params"] == 20035018 and info["flops"] > 7.9e8
    assert info["widths"]["features.1"] == 64


def test_info_with_classes_and_input_size(capsys):
    code, out, _ = run(capsys, "info", "resnet164", "--num-classes", "100", "--input-size", "32", "--json")
    assert code == 0 and json.loads(out)["params"] == pytest.approx(1.73e6, rel=0.01)


CLI_DIR = Path(netslim.cli.__file__).parent
CLI_MODULE_LINES = 200


def _data_imports(source: str, package: str = "netslim.cli") -> list[str]:
    """The netslim.data modules a module of ``package`` imports, anywhere in it (inside functions too)."""
    imported = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            module = importlib.util.resolve_name("." * node.level + (node.module or ""), package) \
                if node.level else node.module
            imported += [module, *(f"{module}.{alias.name}" for alias in node.names)]
    return [name for name in imported if name == "netslim.data" or name.startswith("netslim.data.")]


def test_the_data_import_check_finds_every_spelling():
    for source in ("from ..data import Loader", "from ..data.loader import Loader", "from .. import data",
                   "import netslim.data.registry", "from netslim.data import load_dataset",
                   "def run(args):\n    from ..data import make_loaders\n"):
        assert _data_imports(source), source
    assert not _data_imports("from ..pipeline import run_experiment\nfrom .common import data_options")


def test_the_command_line_is_one_short_module_per_subcommand_that_loads_no_data():
    """The CLI parses and calls the library; loading data, evaluating and timing live in the library."""
    modules = sorted(CLI_DIR.glob("*.py"))
    assert {p.stem for p in modules} >= {"__init__", "common", *netslim.cli.COMMANDS}
    for path in modules:
        source = path.read_text()
        assert len(source.splitlines()) < CLI_MODULE_LINES, f"{path.name} is {len(source.splitlines())} lines"
        assert not _data_imports(source), f"{path.name} imports {_data_imports(source)}"
    for module in netslim.cli.SUBCOMMANDS:
        assert callable(module.add_parser) and callable(module.run), module.__name__


def test_what_the_commands_do_is_the_library_s(trained, tmp_path, capsys):
    """From a notebook: the same work, what it says given to ``log``, nothing printed."""
    from netslim.model_info import model_info
    from netslim.prune_checkpoint import prune_checkpoint

    assert model_info("vgg19")["params"] == 20035018
    said = []
    pruned = prune_checkpoint(str(trained / "last.pt"), tmp_path / "s.pt", percent=0.5, dataset="digits",
                              recalibrate=2, log=said.append)
    assert pruned.path.exists() and pruned.plan.pruned_channels == 400
    assert any("right after pruning" in line for line in said) and capsys.readouterr().out == ""


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    code = main(["train", "--model", "mlp", "--dataset", "digits", "--sparsity", "1e-2", "--bn-init", "0.5",
                 "--epochs", "3", "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_train_writes_checkpoints_and_metrics(trained):
    assert (trained / "last.pt").exists() and (trained / "best.pt").exists()
    assert len((trained / "metrics.jsonl").read_text().splitlines()) == 3


def test_prune_prints_table_counts_and_accuracy(trained, tmp_path, capsys):
    code, out, _ = run(capsys, "prune", str(trained / "last.pt"), "--percent", "0.5", "--dataset", "digits",
                       "--out", str(tmp_path / "small.pt"), "--plan-out", str(tmp_path / "plan.json"))
    assert code == 0
    assert "hidden.1" in out and "params:" in out and "FLOPs:" in out and "right after pruning" in out
    code, out, _ = run(capsys, "info", str(tmp_path / "small.pt"), "--json")
    assert code == 0 and sum(json.loads(out)["widths"].values()) < 500 + 300
    assert json.loads((tmp_path / "plan.json").read_text())["pruned_channels"] == 400
    torch.load(tmp_path / "small.pt", weights_only=True)


def test_finetune_a_pruned_checkpoint(trained, tmp_path, capsys):
    assert main(["prune", str(trained / "last.pt"), "--layer-percent", "0.8", "--out", str(tmp_path / "s.pt")]) == 0
    code, out, _ = run(capsys, "finetune", str(tmp_path / "s.pt"), "--dataset", "digits", "--epochs", "2",
                       "--out", str(tmp_path / "ft"), "--no-progress")
    assert code == 0 and "test accuracy" in out and (tmp_path / "ft" / "best.pt").exists()


def test_run_preset_end_to_end_and_report(tmp_path, capsys):
    code, out, _ = run(capsys, "run", "demo", "--epochs", "2", "--out", str(tmp_path / "r"), "--no-progress")
    assert code == 0 and "| pass 1 fine-tuned |" in out
    rows = json.loads((tmp_path / "r" / "results.json").read_text())["rows"]
    assert [r["model"] for r in rows][0] == "baseline" and rows[-1]["params_pruned"] > 0.3
    code, out, _ = run(capsys, "report", str(tmp_path / "r"))
    assert code == 0 and "gamma_distribution.png" in out and "gamma_heatmap.png" in out


def test_run_list_shows_presets(capsys):
    code, out, _ = run(capsys, "run", "--list")
    assert code == 0 and "demo" in out and "table1-cifar10-vgg19-70" in out and "table4-cifar10-vgg19-multipass" in out


def test_help_shows_the_library_defaults(capsys):
    from netslim.sparsity import KINDS, SCHEDULES
    from netslim.train import TrainConfig

    code, out, _ = run(capsys, "train", "--help")
    defaults = TrainConfig()
    assert code == 0 and f"(default: {defaults.epochs})" in out and f"(default: {defaults.weight_decay})" in out
    assert "{" + ",".join(KINDS) + "}" in out and "{" + ",".join(SCHEDULES) + "}" in out
    assert "(default: None)" not in out and "(default: False)" not in out


def test_run_overrides_give_a_checked_copy():
    from netslim.pipeline import load_config, overridden

    config = load_config("demo")
    changed = overridden(config, passes=2, epochs=3, device="cpu", cuda_graph=True)
    assert changed.passes == 2 and changed.train["epochs"] == changed.finetune["epochs"] == 3
    assert changed.train["device"] == "cpu" and changed.train["cuda_graph"] is True
    assert config.passes == 1 and config.train.get("epochs") != 3  # the original is left as it was
    with pytest.raises(ValueError, match="epochs"):
        overridden(config, epochs=-1)


def _bad_cases(tmp_path):
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(b"PK\x03\x04garbage")
    readonly = tmp_path / "ro"
    readonly.mkdir()
    readonly.chmod(0o500)
    return [
        (["info", "vgg20"], "unknown model"),
        (["info", "nope.pt"], "does not exist"),
        (["prune", str(truncated), "--out", str(tmp_path / "x.pt")], "truncated or corrupt"),
        (["prune", str(truncated), "--percent", "1.5", "--out", str(tmp_path / "x.pt")], "outside [0, 1)"),
        (["train", "--model", "mlp", "--dataset", "nosuch", "--out", str(tmp_path / "t")], "unknown dataset"),
        (["train", "--model", "nosuch", "--dataset", "digits", "--out", str(tmp_path / "t")], "unknown model"),
        (["train", "--model", "mlp", "--dataset", "digits", "--epochs", "0", "--out", str(tmp_path)], ">= 1"),
        (["run", "nosuchpreset"], "presets:"),
        (["run"], "give a preset"),
        (["train", "--model", "mlp", "--dataset", "cifar10", "--data-dir", str(tmp_path / "empty"), "--no-download",
          "--out", str(tmp_path / "t")], "CIFAR-10"),
    ]


def test_bad_input_is_one_line_and_exit_code_2(tmp_path, capsys):
    for argv, message in _bad_cases(tmp_path):
        code, out, err = run(capsys, *argv)
        assert code == 2, (argv, err)
        assert message in err, (argv, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1, (argv, err)


def test_unwritable_out_folder(tmp_path, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        (folder / "probe").touch()
        pytest.skip("running with privileges that ignore permissions")
    except OSError:
        pass
    code, _, err = run(capsys, "train", "--model", "mlp", "--dataset", "digits", "--out", str(folder / "sub"))
    assert code == 2 and "cannot create output folder" in err


def test_fuzzed_options_and_files_never_escape_as_tracebacks(tmp_path, capsys):
    rng = random.Random(0)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(bytes(rng.randrange(256) for _ in range(300)))
    yaml_bad = tmp_path / "bad.yaml"
    yaml_bad.write_text("model: [unclosed\n")
    yaml_unknown = tmp_path / "unknown.yaml"
    yaml_unknown.write_text("model: mlp\ndataset: digits\nlearning_rate: 3\n")
    yaml_types = tmp_path / "types.yaml"
    yaml_types.write_text("model: mlp\ndataset: digits\ntrain: {epochs: many}\n")
    values = ["-1", "0", "1.5", "nan", "abc", "", "1e309", str(junk), str(yaml_bad), "--", "3,x,2"]
    commands = [["info"], ["prune", str(junk)], ["run"], ["run", str(yaml_bad)], ["run", str(yaml_unknown)],
                ["run", str(yaml_types)], ["train", "--model", "mlp", "--dataset", "digits"]]
    options = ["--percent", "--epochs", "--lr", "--sparsity", "--input-size", "--num-classes", "--min-channels",
               "--max-layer-fraction", "--batch-size", "--passes", "--out"]
    for _ in range(60):
        argv = list(rng.choice(commands))
        for _ in range(rng.randrange(1, 3)):
            argv += [rng.choice(options), rng.choice(values)]
        if "--out" not in argv and argv[0] in ("prune", "train"):
            argv += ["--out", str(tmp_path / "fuzz_out")]
        argv += ["--epochs", "1"] if argv[0] == "train" and "--epochs" not in argv else []
        code, _, err = run(capsys, *argv)
        assert code in (0, 2), (argv, err)
        assert "Traceback" not in err, (argv, err)


def test_export_folded_onnx_and_torchscript(trained, tmp_path, capsys):
    assert main(["prune", str(trained / "last.pt"), "--percent", "0.5", "--out", str(tmp_path / "s.pt")]) == 0
    argv = ["export", str(tmp_path / "s.pt"), "--torchscript", str(tmp_path / "s.ts")]
    try:
        import onnx  # noqa: F401
        argv += ["--onnx", str(tmp_path / "s.onnx")]
    except ImportError:
        pass
    code, out, err = run(capsys, *argv)
    assert code == 0, err
    scripted = torch.jit.load(str(tmp_path / "s.ts"))
    from netslim.checkpoint import load_model
    model, _ = load_model(tmp_path / "s.pt")
    x = torch.randn(4, *model.input_size)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), model.eval()(x), rtol=1e-4, atol=1e-4)
    assert run(capsys, "export", str(tmp_path / "s.pt"))[0] == 2


def test_gpu_requests_without_a_gpu(tmp_path, capsys):
    """--device cuda without a GPU: one line, exit 2; --cuda-graph on the CPU: one warning line, eager training."""
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    base = ["train", "--model", "mlp", "--dataset", "digits", "--epochs", "1", "--no-progress"]
    code, _, err = run(capsys, *base, "--device", "cuda", "--out", str(tmp_path / "a"))
    assert code == 2 and "no CUDA GPU" in err and len(err.strip().splitlines()) == 1
    code, out, err = run(capsys, *base, "--cuda-graph", "--out", str(tmp_path / "b"))
    assert code == 0 and "done: test accuracy" in out
    lines = [x for x in err.strip().splitlines() if "cuda" in x.lower()]
    assert lines == ["netslim: warning: --cuda-graph needs a CUDA device; training on cpu runs eagerly"]


def test_fuzzed_config_files_and_checkpoint_headers_never_escape_as_tracebacks(tmp_path, capsys):
    """The fuzzing reaches what files say, not only flags: one key of a small config, or one
    field of a checkpoint's header, replaced by a hostile value; the answer is done or one line, exit 2."""
    import yaml

    from netslim import models
    from netslim.checkpoint import describe, save_checkpoint

    rng = random.Random(1)
    junk = [None, -1, 0, 10 ** 12, 1.5, float("nan"), "x", "", True, [], {}, [1, 2], {"a": 1}, "../../etc/passwd",
            "subprocess:getoutput"]
    nested = 1
    for _ in range(200):
        nested = [nested]
    junk.append(nested)
    base = {"model": "mlp", "dataset": "digits", "model_kwargs": {"widths": [16, 8]}, "baseline": False,
            "train": {"epochs": 1, "sparsity": 1e-3, "progress": False}, "finetune": {"epochs": 1},
            "prune": {"percent": 0.5}}
    for k in range(25):
        config = json.loads(json.dumps(base))
        section = rng.choice([None, "train", "finetune", "prune", "model_kwargs"])
        target = config if section is None else config[section]
        key = rng.choice(sorted(set(target) | {"lr", "momentum", "grad_clip", "min_channels", "recalibrate", "extra"}))
        target[key] = rng.choice(junk)
        path = tmp_path / f"c{k}.yaml"
        path.write_text(yaml.safe_dump(config))
        code, _, err = run(capsys, "run", str(path), "--out", str(tmp_path / f"r{k}"), "--no-progress")
        assert code in (0, 2) and "Traceback" not in err and len(err.strip().splitlines()) <= 1, (config, err)

    model = models.create("mlp", widths=[16, 8], input_size=(1, 8, 8))
    header = {"arch": describe(model, "mlp", {"widths": [16, 8], "input_size": (1, 8, 8)}),
              "state_dict": model.state_dict(), "epoch": 1, "history": [], "plan": {}}
    fields = [("arch",), ("arch", "name"), ("arch", "kwargs"), ("arch", "kwargs", "widths"), ("arch", "shapes"),
              ("arch", "shapes", "hidden.0"), ("arch", "input_size"), ("state_dict",),
              ("state_dict", "hidden.0.weight"), ("format",)]
    for k in range(30):
        data = {"arch": dict(header["arch"], kwargs=dict(header["arch"]["kwargs"]),
                             shapes=dict(header["arch"]["shapes"])), **{f: header[f] for f in header if f != "arch"}}
        data["state_dict"] = dict(data["state_dict"])
        *parents, leaf = rng.choice(fields)
        target = data
        for name in parents:
            target = target[name]
        target[leaf] = rng.choice(junk)
        path = tmp_path / f"h{k}.pt"
        save_checkpoint(path, data)
        for argv in (["info", str(path)], ["prune", str(path), "--overwrite", "--out", str(tmp_path / "s.pt")]):
            code, _, err = run(capsys, *argv)
            assert code in (0, 2) and "Traceback" not in err and len(err.strip().splitlines()) <= 1, (argv, data, err)


def test_prune_fold_carrier_keeps_the_masked_models_outputs(tmp_path, capsys):
    """--fold carrier: β of pruned channels carried exactly through zero-padded convs, and said."""
    from netslim import masked_model, models
    from netslim.checkpoint import describe, load_model, save_checkpoint
    from netslim.plan import PruningPlan
    from netslim.testing import randomize_bn

    kwargs = {"widths": [8, 8, 16, 16] + [16] * 12, "num_classes": 10, "in_channels": 1, "input_size": 28}
    model = randomize_bn(models.create("vgg19", **kwargs)).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.bias.abs_()
    save_checkpoint(tmp_path / "m.pt", {"arch": describe(model, "vgg19", kwargs), "state_dict": model.state_dict()})
    code, out, _ = run(capsys, "prune", str(tmp_path / "m.pt"), "--percent", "0.5", "--fold", "carrier",
                       "--out", str(tmp_path / "s.pt"))
    assert code == 0 and "carried exactly into 15" in out
    small, data = load_model(tmp_path / "s.pt")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        reference = masked_model(model, PruningPlan.from_dict(data["plan"]), fold_bias="carrier")(x)
        assert (small.eval()(x) - reference).abs().max() <= 1e-4 * reference.abs().max()
    code, _, err = run(capsys, "prune", str(tmp_path / "m.pt"), "--fold", "carrier", "--no-fold",
                       "--out", str(tmp_path / "t.pt"))
    assert code == 2 and "give one of --fold" in err and not (tmp_path / "t.pt").exists()


def test_train_from_a_checkpoint_takes_the_model_from_it(trained, tmp_path, capsys):
    from netslim.checkpoint import load_checkpoint

    code, out, err = run(capsys, "train", "--from", str(trained / "best.pt"), "--dataset", "digits", "--epochs", "1",
                         "--sparsity", "auto", "--out", str(tmp_path / "sparse"), "--no-progress")
    assert code == 0, err
    assert load_checkpoint(tmp_path / "sparse" / "last.pt")["arch"]["name"] == "mlp"
    code, _, err = run(capsys, "train", "--model", "vgg19", "--from", str(trained / "best.pt"), "--dataset",
                       "digits", "--out", str(tmp_path / "other"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "holds a mlp" in err and "drop --model" in err
    code, _, err = run(capsys, "train", "--dataset", "digits", "--out", str(tmp_path / "none"))
    assert code == 2 and "give --model NAME (a new model) or --from CKPT" in err


def _tiny_config(tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text("model: mlp\ndataset: digits\nmodel_kwargs: {widths: [32, 16]}\nbaseline: false\n"
                      "train: {epochs: 2, sparsity: 0.01, bn_init: 0.5}\nfinetune: {epochs: 1}\n"
                      "prune: {percent: 0.5}\n")
    return config


def test_run_has_the_no_resume_its_messages_name(tmp_path, capsys):
    config, out_dir = _tiny_config(tmp_path), tmp_path / "run"
    assert main(["run", str(config), "--out", str(out_dir), "--no-progress"]) == 0
    code, out, err = run(capsys, "run", str(config), "--out", str(out_dir), "--no-progress")
    assert code == 0, err
    assert "nothing to train (--no-resume starts over)" in out
    code, out, err = run(capsys, "run", str(config), "--out", str(out_dir), "--no-progress", "--no-resume")
    assert code == 0, err
    assert out.count("starting over in") == 2 and "nothing to train" not in out  # the sparse and fine-tune stages
    changed = tmp_path / "changed.yaml"
    changed.write_text(config.read_text().replace("percent: 0.5", "percent: 0.25"))
    assert run(capsys, "run", str(changed), "--out", str(out_dir), "--no-progress")[0] == 2  # another config
    code, out, err = run(capsys, "run", str(changed), "--out", str(out_dir), "--no-progress", "--no-resume")
    assert code == 0, err
    assert json.loads((out_dir / "results.json").read_text())["config"]["prune"]["percent"] == 0.25


def test_progress_off_a_terminal_is_one_line_per_epoch(tmp_path, capsys):
    """Under capsys, as in a log file or a pipe, stderr is not a terminal: no bar redrawn every few batches."""
    code, out, err = run(capsys, "train", "--model", "mlp", "--dataset", "digits", "--epochs", "3",
                         "--out", str(tmp_path / "t"))
    assert code == 0 and "\r" not in err and "it/s" not in err, err
    assert [line.split(",")[0] for line in out.splitlines() if line.startswith("epoch")] == \
        ["epoch 1", "epoch 2", "epoch 3"]
    code, out, err = run(capsys, "run", str(_tiny_config(tmp_path)), "--out", str(tmp_path / "r"))
    assert code == 0 and "\r" not in err and "it/s" not in err, err
    assert [line.split(",")[0] for line in out.splitlines() if line.startswith("epoch")] == \
        ["epoch 1", "epoch 2", "epoch 1"]  # sparse training 2 epochs, fine-tuning 1
    assert "(2/2)" in out and "(1/1)" in out


def test_a_model_factory_in_the_working_directory_is_found(tmp_path):
    """As the installed `netslim` script runs (its own folder first on sys.path, not the working directory)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import netslim

    (tmp_path / "work" / "mypkg").mkdir(parents=True)
    (tmp_path / "work" / "mypkg" / "__init__.py").write_text("")
    (tmp_path / "work" / "mypkg" / "models.py").write_text(
        "from torch import nn\n\ndef small(num_classes=10):\n"
        "    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),\n"
        "                         nn.Flatten(), nn.Linear(8, num_classes))\n")
    (tmp_path / "bin").mkdir()
    script = tmp_path / "bin" / "netslim"
    script.write_text("import sys\nfrom netslim.cli import main\nsys.exit(main())\n")
    env = {**os.environ, "PYTHONPATH": str(Path(netslim.__file__).parents[1])}

    def netslim_in(folder):
        return subprocess.run([sys.executable, str(script), "info", "mypkg.models:small", "--input-size", "3,16,16"],
                              cwd=folder, env=env, capture_output=True, text=True, timeout=120)

    found = netslim_in(tmp_path / "work")
    assert found.returncode == 0 and "parameters" in found.stdout, found.stderr
    missing = netslim_in(tmp_path)
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1
    assert f"working directory ({tmp_path})" in missing.stderr and "folder that holds mypkg/" in missing.stderr
    assert "PYTHONPATH" in missing.stderr


@pytest.mark.slow
def test_the_demo_table_shows_what_pruning_costs_and_what_wins_it_back(tmp_path, capsys):
    """`make demo`: the rows differ visibly (the task is hard enough that test error is not one image)."""
    code, out, err = run(capsys, "run", "demo", "--out", str(tmp_path / "demo"), "--no-progress")
    assert code == 0, err
    error = {r["model"]: r["test_error"] for r in json.loads((tmp_path / "demo" / "results.json").read_text())["rows"]}
    base, sparse = error["baseline"], error["pass 1 trained with sparsity"]
    pruned, recalibrated = error["pass 1 pruned, before fine-tuning"], error["pass 1 pruned, BN re-estimated"]
    tuned = error["pass 1 fine-tuned"]
    assert base >= 1.5 and abs(sparse - base) < 2  # sparse training costs little
    # 70% cuts past the 50% made free. The target pulls only the channels it makes prunable, so the 20% cut
    # beyond them are live and undisturbed (measured at 6c172da: 1.95 sparse, 10.03 pruned, 6.96 re-estimated,
    # 1.67 fine-tuned); the earlier controller, which pulled every γ down, made it cost 41 points (ba2cdc6).
    assert pruned > sparse + 5 and recalibrated < pruned - 2 and tuned < recalibrated
    assert tuned < base + 3


def test_fuzzed_latency_caches_and_plan_files_never_escape_as_tracebacks(trained, tmp_path, capsys, monkeypatch):
    """What a latency cache or a plan file says, replaced by a hostile value: the answer is a plan (the cache
    rebuilt, one warning line), or one line and exit 2; never a traceback. Layer timings follow a law here,
    so that what is fuzzed is the reading, not this machine's speed."""
    import copy

    import netslim.latency as latency
    import netslim.timing as timing
    from netslim import apply_plan
    from netslim.checkpoint import load_model
    from netslim.plan import PruningPlan

    rng = random.Random(2)
    junk = [None, -1, 0, 1.5, float("nan"), float("inf"), 10 ** 400, "x", "", True, [], {}, [1, 2], {"a": 1},
            [0.9, 1.7], [-1], [10 ** 9], ["a"], [1, 3, 10 ** 6, 10 ** 6], "1,2", "*", ["*"]]

    def mutated(data, depth_limit=3):
        """``data`` with one value somewhere inside (or one key) replaced by junk."""
        data = copy.deepcopy(data)
        target, depth = data, 0
        while isinstance(target, dict) and target and depth < depth_limit:
            key = rng.choice(sorted(target))
            if depth == depth_limit - 1 or not isinstance(target[key], dict | list) or rng.random() < 0.3:
                if rng.random() < 0.2:
                    target[rng.choice(["1,2,3", "-1,5", "a,b", "", "１,２", "9999999999,1", "1.5,2"])] = \
                        target.pop(key)
                else:
                    target[key] = rng.choice(junk)
                return data
            target, depth = target[key], depth + 1
        return rng.choice(junk)

    def text_of(data) -> str:
        text = json.dumps(data)
        return rng.choice([text, text, text, text[: rng.randrange(len(text))], "[" * 50_000, "null"])

    monkeypatch.setattr(latency, "_time_layer", lambda layer, kind, shape, x, n_in, n_out, repeats, backend="eager": (
        {(i, o): 1e-6 * i * o for i, o in latency.probe_pairs(kind, n_in, n_out)}, True))
    monkeypatch.setattr(latency, "deployed_latency", lambda model, x, backend="eager", repeats=20: 1.0)
    monkeypatch.setattr(latency, "deployed_latencies", lambda models, x, backend="eager", repeats=20:
                        [1.0] + [0.5] * (len(models) - 1))
    monkeypatch.setattr(timing, "END_TO_END", 0.02)
    monkeypatch.setenv("NETSLIM_CACHE", str(tmp_path / "cache"))
    speedup = ["prune", "mlp", "--target-speedup", "1.5", "--overwrite", "--out", str(tmp_path / "l.pt")]
    assert main(speedup) == 0
    cache = next((tmp_path / "cache").rglob("*.json"))
    good = json.loads(cache.read_text())
    for _ in range(25):
        cache.write_text(text_of(mutated(good)))
        code, _, err = run(capsys, *speedup)
        assert code in (0, 2) and "Traceback" not in err and "internal error" not in err, (cache.read_text()[:300], err)
        assert len(err.strip().splitlines()) <= 1, err

    assert main(["prune", str(trained / "last.pt"), "--percent", "0.5", "--out", str(tmp_path / "s.pt"),
                 "--plan-out", str(tmp_path / "plan.json")]) == 0
    good = json.loads((tmp_path / "plan.json").read_text())
    model, _ = load_model(trained / "last.pt")
    run_dir = tmp_path / "run"
    (run_dir / "pass1" / "sparse").mkdir(parents=True)
    (run_dir / "pass1" / "sparse" / "last.pt").write_bytes((trained / "last.pt").read_bytes())
    for k in range(40):
        text = text_of(mutated(good))
        (tmp_path / "p.json").write_text(text)
        try:
            plan = PruningPlan.load(tmp_path / "p.json")
            apply_plan(model, plan)
        except ValueError as e:
            assert "\n" not in str(e), (text[:300], e)
        if k % 8 == 0:
            (run_dir / "pass1" / "plan.json").write_text(text)
            code, _, err = run(capsys, "report", str(run_dir))
            assert code in (0, 2) and "Traceback" not in err and len(err.strip().splitlines()) <= 1, (text[:300], err)
