"""Ultralytics YOLO end to end, offline: sparse training with Ultralytics' own trainer →
exact pruning → fine-tuning with their trainer → their validation and export. Needs ``ultralytics``
(an optional extra, installed in CI); skipped where it is missing."""

import os
import warnings

import numpy as np
import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")  # no font, weight or version downloads
ultralytics = pytest.importorskip("ultralytics")
Image = pytest.importorskip("PIL.Image")

from netslim.foreign import UntrustedPickle  # noqa: E402
from netslim.integrations import ultralytics as slim  # noqa: E402


@pytest.fixture(scope="module")
def data_yaml(tmp_path_factory):
    """A tiny two-class detection dataset in the real YOLO format: PNG images, label .txt files, a data yaml."""
    root = tmp_path_factory.mktemp("shapes")
    rng = np.random.default_rng(0)
    for split, n in (("train", 16), ("val", 8)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(n):
            img, lines = np.full((64, 64, 3), 40, np.uint8), []
            for _ in range(2):
                c = int(rng.integers(2))
                w, h = (int(v) for v in rng.integers(12, 28, 2))
                x0, y0 = int(rng.integers(0, 64 - w)), int(rng.integers(0, 64 - h))
                img[y0:y0 + h, x0:x0 + w] = (220, 60, 60) if c == 0 else (60, 60, 220)
                lines.append(f"{c} {(x0 + w / 2) / 64:.5f} {(y0 + h / 2) / 64:.5f} {w / 64:.5f} {h / 64:.5f}")
            Image.fromarray(img).save(root / "images" / split / f"{i}.png")
            (root / "labels" / split / f"{i}.txt").write_text("\n".join(lines) + "\n")
    path = root / "data.yaml"
    path.write_text(f"path: {root}\ntrain: images/train\nval: images/val\nnames:\n  0: red\n  1: blue\n")
    return path


def _args(data_yaml, tmp_path, name, **extra):
    # SGD at a constant lr, one optimizer step per batch: the term's effect is predictable
    return dict(data=str(data_yaml), imgsz=64, batch=8, nbs=8, workers=0, device="cpu", plots=False, amp=False,
                optimizer="SGD", lr0=0.01, lrf=1.0, warmup_epochs=0, momentum=0.0, weight_decay=0.0, seed=0,
                deterministic=True, project=str(tmp_path), name=name, exist_ok=True, verbose=False, **extra)


def _gamma_sum(model) -> float:
    return sum(float(m.weight.detach().abs().sum()) for m in model.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))


def test_yolov8n_sparse_train_prune_finetune_validate_export(data_yaml, tmp_path):
    YOLO = ultralytics.YOLO
    plain = YOLO("yolov8n.yaml")
    plain.train(epochs=1, **_args(data_yaml, tmp_path, "plain"))
    lam = 0.1
    sparse = YOLO("yolov8n.yaml")
    slim.add_sparsity(sparse, lam=lam)
    sparse.train(epochs=1, **_args(data_yaml, tmp_path, "sparse"))
    trainer = sparse.trainer
    assert trainer.sparsity_stats["lambda"] == lam
    # Eq. 1 inside Ultralytics' trainer: every γ moved lr·λ further towards zero per optimizer step
    # (2 steps: 16 images, batch 8), on top of what the same seeded plain run did.
    n = sum(m.weight.numel() for m in trainer.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm))
    expected = 2 * 0.01 * lam * n
    shrink = _gamma_sum(plain.trainer.model) - _gamma_sum(trainer.model)
    assert shrink == pytest.approx(expected, rel=0.05)

    with pytest.raises(UntrustedPickle, match="--trust-pickle"):
        slim.load_yolo(trainer.best)
    with pytest.warns(UserWarning, match="trust-pickle"):
        model = slim.load_yolo(trainer.best, trust_pickle=True)
    compact, plan = slim.prune_yolo(model, 0.5, imgsz=64)
    assert plan.pruned_channels > 0.4 * plan.total_channels
    params = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in compact.parameters()) < 0.6 * params
    x = torch.rand(1, 3, 96, 96)  # another size than the analysis saw
    with torch.no_grad():
        assert compact(x)[0].shape == model(x)[0].shape

    small = slim.save_yolo(compact, tmp_path / "small.pt")
    tuned = slim.finetune_yolo(small, trust_pickle=True, epochs=1, **_args(data_yaml, tmp_path, "ft"))
    result = YOLO(tuned.best)  # Ultralytics' own loader: the compact architecture, not one rebuilt from yaml
    assert sum(p.numel() for p in result.model.parameters()) == sum(p.numel() for p in compact.parameters())
    metrics = result.val(data=str(data_yaml), imgsz=64, batch=8, device="cpu", plots=False, workers=0,
                         verbose=False)
    assert 0.0 <= metrics.box.map50 <= 1.0
    onnx_path = result.export(format="onnx", imgsz=64, simplify=False, device="cpu")
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(onnx_path, providers=["CPUExecutionProvider"])
    out = session.run(None, {session.get_inputs()[0].name: np.random.rand(1, 3, 64, 64).astype(np.float32)})
    assert out[0].shape[1] == 4 + 2  # boxes + the dataset's two classes


def test_yolo11n_prunes_exactly_and_keeps_attention():
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolo11n.yaml", verbose=False).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0, 1)
    compact, plan = slim.prune_yolo(model, 0.5, imgsz=64)
    qkv = [n for n, m in model.named_modules() if n.endswith("attn.qkv.conv")]
    assert qkv and all(compact.get_submodule(n).weight.shape == model.get_submodule(n).weight.shape for n in qkv)
    masked = __import__("netslim").masked_model(model, plan, example_input=torch.zeros(1, 3, 64, 64)).eval()
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        a, b = masked(x)[0], compact(x)[0]
    assert (a - b).abs().max() <= 1e-4 * a.abs().max()


@pytest.mark.parametrize("config", ["yolov8n.yaml", "yolo11n.yaml"])
def test_cli_prunes_an_unmodified_yolo_that_ultralytics_then_runs_and_saves(config, tmp_path, capsys):
    from netslim.checkpoint import load_model
    from netslim.cli import main

    out = tmp_path / "small.pt"
    assert main(["prune", f"ultralytics:{config}", "--percent", "0.5", "--input-size", "3,64,64",
                 "--out", str(out), "--ultralytics-out", str(tmp_path / "small-yolo.pt")]) == 0
    assert "compact model saved" in capsys.readouterr().out
    torch.load(out, weights_only=True)  # netslim's own checkpoint: plain data
    compact, data = load_model(out)  # rebuilt from the packaged yaml name and the stored shapes
    assert data["arch"]["name"] == f"ultralytics:{config}"
    full = ultralytics.YOLO(config).model
    assert sum(p.numel() for p in compact.parameters()) < sum(p.numel() for p in full.parameters())
    yolo = ultralytics.YOLO(str(tmp_path / "small-yolo.pt"))  # Ultralytics' own loader and predictor
    results = yolo.predict(torch.rand(1, 3, 64, 64), imgsz=64, device="cpu", verbose=False)
    assert len(results) == 1
    yolo.save(tmp_path / "saved.pt")
    assert (tmp_path / "saved.pt").stat().st_size > 0


def test_cli_reads_an_ultralytics_checkpoint_only_with_trust_pickle(tmp_path, capsys):
    from netslim.cli import main

    yolo = ultralytics.YOLO("yolov8n.yaml")
    yolo.save(tmp_path / "trained.pt")
    argv = ["prune", str(tmp_path / "trained.pt"), "--percent", "0.3", "--input-size", "3,64,64",
            "--out", str(tmp_path / "small.pt")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--trust-pickle" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "small.pt").exists()
    assert main([*argv, "--trust-pickle"]) == 0
    assert main(["info", str(tmp_path / "small.pt"), "--json"]) == 0  # weights-only from here on


_EVIL_CONFIG = """nc: 4
activation: "__import__('os').system('touch PWNED') or nn.SiLU()"
backbone:
  - [-1, 1, Conv, [16, 3, 2]]
head:
  - [[0], 1, Detect, [nc]]
"""


def test_an_ultralytics_config_named_in_a_checkpoint_is_read_only_from_the_package(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    from netslim.checkpoint import CheckpointError, describe, load_model, save_checkpoint
    from netslim.cli import main
    from netslim.models import create_model

    monkeypatch.chdir(tmp_path)
    real = create_model("ultralytics:yolov8n.yaml", {"nc": 4})
    save_checkpoint("y.pt", {"arch": describe(real, "ultralytics:yolov8n.yaml", {"nc": 4}),
                             "state_dict": real.state_dict()})
    # Ultralytics looks in the working directory first: a config there under any name it could resolve
    for name in ("evilnet.yaml", "yolov8n.yaml", "yolov8.yaml"):
        Path(name).write_text(_EVIL_CONFIG)
    for name in ("ultralytics:evilnet.yaml", "ultralytics:*.yaml", "ultralytics:yolov8?.yaml",
                 "ultralytics:[y]olov8.yaml"):
        save_checkpoint("evil.pt", {"arch": {"name": name, "kwargs": {}, "shapes": {}}, "state_dict": {}})
        assert main(["info", "evil.pt"]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        with pytest.raises(CheckpointError):
            load_model("evil.pt")
        assert not Path("PWNED").exists(), name
    save_checkpoint("evil.pt", {"arch": {"name": "ultralytics:evilnet.yaml", "kwargs": {}, "shapes": {}},
                                "state_dict": {}})
    with pytest.raises(CheckpointError, match="--factory ultralytics:evilnet.yaml"):
        load_model("evil.pt")
    rebuilt, _ = load_model("y.pt")  # the packaged yolov8.yaml at scale n, not the files of this folder
    assert not Path("PWNED").exists()
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in real.parameters())
    assert Path(rebuilt.yaml["yaml_file"]).parent != tmp_path


def test_a_users_own_ultralytics_config_rebuilds_when_the_user_names_it(tmp_path, monkeypatch):
    from pathlib import Path

    from netslim.checkpoint import CheckpointError, describe, load_model, save_checkpoint
    from netslim.models import create_model

    monkeypatch.chdir(tmp_path)
    shipped = Path(ultralytics.__file__).parent / "cfg" / "models" / "v8" / "yolov8.yaml"
    Path("mynet.yaml").write_text(shipped.read_text())
    model = create_model("ultralytics:mynet.yaml", {"nc": 3})
    save_checkpoint("m.pt", {"arch": describe(model, "ultralytics:mynet.yaml", {"nc": 3}),
                             "state_dict": model.state_dict()})
    with pytest.raises(CheckpointError, match="does not ship"):
        load_model("m.pt")
    rebuilt, _ = load_model("m.pt", factory="ultralytics:mynet.yaml")
    assert all(torch.equal(a, b) for a, b in zip(rebuilt.state_dict().values(), model.state_dict().values(),
                                                  strict=True))


def test_ultralytics_training_says_when_a_fixed_lambda_cannot_work_and_when_sparsity_stalls(data_yaml, tmp_path):
    yolo = ultralytics.YOLO("yolov8n.yaml")
    slim.add_sparsity(yolo, lam=1e-4)  # the value the README used to give, on a 4-step run
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yolo.train(epochs=2, **_args(data_yaml, tmp_path, "fixed"))
    said = [str(w.message) for w in caught if "sparsity" in str(w.message)]
    assert sum("can move a BN scale by at most" in m for m in said) == 1, said
    assert sum("not emerging" in m for m in said) == 1, said


def test_ultralytics_training_for_a_target_records_lambda_and_sparsifies_at_once(data_yaml, tmp_path):
    import csv

    yolo = ultralytics.YOLO("yolov8n.yaml")
    slim.add_sparsity(yolo, target=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yolo.train(epochs=3, **_args(data_yaml, tmp_path, "target"))  # 6 optimizer steps
    with open(tmp_path / "target" / "results.csv") as f:
        rows = list(csv.DictReader(f))
    lams = [float(row["netslim/lambda"]) for row in rows]
    shares = [float(row["netslim/below_1e-2"]) for row in rows]
    assert len(lams) == 3 and all(lam > 0 for lam in lams) and all(0 <= s <= 1 for s in shares)
    stats = yolo.trainer.sparsity_stats
    assert stats["target"] == 0.5 and shares[-1] > 0.2  # a run this short already goes a good part of the way
    assert stats["gamma_q75"] > 0.9  # the channels beyond the target's share are not pulled down with the rest
    assert not [w for w in caught if "sparsity" in str(w.message)]


def test_prune_yolo_recalibrates_on_the_users_own_dataset(data_yaml, recwarn):
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", nc=2, verbose=False).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0, 1)
    plain, _ = slim.prune_yolo(model, 0.5, imgsz=64)
    calibrated, _ = slim.prune_yolo(model, 0.5, imgsz=64, data=data_yaml, recalibrate=2, batch=8)
    assert calibrated.recalibrated_batches == 2 and not calibrated.training
    means = [(a.running_mean, b.running_mean) for a, b in zip(plain.modules(), calibrated.modules(), strict=True)
             if isinstance(a, torch.nn.BatchNorm2d)]
    assert all(not torch.allclose(a, b) for a, b in means[:5])  # statistics of the dataset's images now
    slim.prune_yolo(model, 0.5, imgsz=64, data=data_yaml, recalibrate=50, batch=8)  # 16 images: 2 batches
    assert any("re-estimated on 2 batches: the data hold 2, not the 50" in str(w.message) for w in recwarn.list)
    with pytest.raises(ValueError, match="needs data="):
        slim.prune_yolo(model, 0.5, imgsz=64, recalibrate=2)


def test_a_pruned_yolo_with_its_own_classes_loads_in_a_fresh_process(tmp_path, capsys):
    """The rebuild builds twice (on the meta device, then for real) and, in a fresh process, imports
    Ultralytics for the first time: neither may change the model (its nc, its anchors' device)."""
    import subprocess
    import sys
    from pathlib import Path

    import netslim
    from netslim.checkpoint import load_model
    from netslim.cli import main

    out = tmp_path / "small.pt"
    assert main(["prune", "ultralytics:yolov8n.yaml", "--num-classes", "2", "--percent", "0.5", "--input-size",
                 "3,64,64", "--out", str(out)]) == 0
    capsys.readouterr()
    compact, _ = load_model(out)
    with torch.no_grad():
        assert compact.eval()(torch.zeros(1, 3, 64, 64))[0].shape[1] == 4 + 2  # boxes and the two classes
    fresh = subprocess.run([sys.executable, "-c", "import sys; from netslim.cli import main; sys.exit(main())",
                            "info", str(out)], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "PYTHONPATH": str(Path(netslim.__file__).parents[1])})
    assert fresh.returncode == 0 and "parameters" in fresh.stdout, fresh.stderr
