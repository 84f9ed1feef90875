"""Deployment of a compact model: BN folded, target precision and layout, torch.export and AOTInductor artifacts."""

import shutil

import pytest
import torch

import netslim
from netslim.cli import main
from netslim.deployment import (
    InferenceModel,
    deploy,
    export_aoti,
    export_program,
    export_torchscript,
    misaligned_widths,
    resolve_target,
    target_defaults,
)
from netslim.export import ExportError, relative_error

from .conftest import randomize_bn

pytestmark = pytest.mark.filterwarnings("ignore:No complete tensor found")  # torch.export.load, CPU weights

WIDTHS = [16, 32, 64, 64, 128, 128, 128, 128]


def _compact(round_to=1):
    model = randomize_bn(netslim.models.create("vgg11", widths=WIDTHS)).eval()
    return netslim.apply_plan(model, netslim.plan_pruning(model, 0.5, round_to=round_to)).eval()


def test_target_defaults():
    assert target_defaults("gpu") == {"dtype": torch.bfloat16, "channels_last": True, "round_to": 8}
    assert target_defaults("cpu") == {"dtype": torch.float32, "channels_last": False, "round_to": 1}
    with pytest.raises(ValueError, match="choose cpu or gpu"):
        target_defaults("tpu")
    assert resolve_target("auto") == ("gpu" if torch.cuda.is_available() else "cpu")
    assert resolve_target("cpu") == "cpu"
    with pytest.raises(ValueError, match="choose auto, cpu or gpu"):
        resolve_target("tpu")


@pytest.mark.parametrize("dtype, tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_deployed_model_computes_what_the_compact_model_does(dtype, tolerance, channels_last):
    small = _compact()
    before = {k: v.clone() for k, v in small.state_dict().items()}
    fast = deploy(small, dtype=dtype, channels_last=channels_last)
    assert isinstance(fast, InferenceModel) and not fast.training
    assert all(p.dtype == dtype and not p.requires_grad for p in fast.parameters())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())  # folded
    conv = fast.net.features[0]
    assert conv.weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        out, expected = fast(x), small(x)
    assert out.dtype == torch.float32 and relative_error(out, expected) <= tolerance
    assert all(torch.equal(before[k], v) for k, v in small.state_dict().items())  # the compact model is untouched


def test_deployed_model_keeps_several_outputs():
    from .topologies import create

    model = randomize_bn(create("tiny_yolo")).eval()
    fast = deploy(model, dtype=torch.bfloat16, channels_last=True)
    x = torch.randn(2, *model.input_size)
    with torch.no_grad():
        expected, got = model(x), fast(x)
    assert isinstance(got, type(expected))
    for a, b in zip(torch.utils._pytree.tree_leaves(got), torch.utils._pytree.tree_leaves(expected), strict=True):
        assert a.dtype == torch.float32 and relative_error(a, b) <= 3e-2


def test_deployed_model_compiles():
    model = randomize_bn(netslim.models.create("mlp", widths=[32, 16], input_size=(1, 4, 4))).eval()
    fast = deploy(model, compile=True)  # torch.compile (on the CPU: inductor's C++ kernels)
    x = torch.randn(3, 1, 4, 4)
    with torch.no_grad():
        assert relative_error(fast(x), model(x)) <= 1e-4


def test_bad_deploy_requests_are_clear():
    small = _compact()
    with pytest.raises(ValueError, match="dtype must be"):
        deploy(small, dtype=torch.int8)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            deploy(small, device="cuda")


def test_misaligned_widths_name_the_layers_pruning_left_odd():
    odd = misaligned_widths(_compact(), 8)
    assert odd and all(width % 8 for width in odd.values()) and all(k.startswith("features.") for k in odd)
    assert misaligned_widths(_compact(round_to=8), 8) == {}
    assert misaligned_widths(_compact(), 1) == {}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_export_program_round_trip_with_a_dynamic_batch(tmp_path, dtype):
    small = _compact()
    path = export_program(small, tmp_path / "small.pt2", dtype=dtype, channels_last=dtype == torch.bfloat16)
    program = torch.export.load(str(path)).module()
    for batch in (1, 6):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            assert relative_error(program(x), small(x)) <= (1e-5 if dtype == torch.float32 else 3e-2)


def test_torchscript_is_traced_from_the_deployed_model(tmp_path):
    small = _compact()
    path = export_torchscript(small, tmp_path / "sub" / "small.ts")
    loaded = torch.jit.load(str(path))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert relative_error(loaded(x), small(x)) <= 1e-5


@pytest.mark.slow
def test_aoti_package_is_compiled_and_checked(tmp_path):
    if shutil.which("g++") is None and shutil.which("c++") is None:
        pytest.skip("AOTInductor needs a C++ compiler")
    small = _compact()
    path = export_aoti(small, tmp_path / "small-aoti.pt2")
    compiled = torch._inductor.aoti_load_package(str(path))
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        assert relative_error(compiled(x), small(x)) <= 1e-4


def test_aoti_package_name_must_end_in_pt2(tmp_path):
    with pytest.raises(ValueError, match="must be a .pt2 file"):
        export_aoti(_compact(), tmp_path / "small.so")


def test_an_export_that_differs_is_refused(tmp_path, monkeypatch):
    """The file as written is loaded back and checked: one that computes something else is never kept."""
    real = torch.export.load

    class Tampered:  # a program whose module computes something else
        def __init__(self, program):
            self.program = program

        def module(self):
            module = self.program.module()
            return lambda x: 2 * module(x)

    monkeypatch.setattr(torch.export, "load", lambda path: Tampered(real(path)))
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export_program(_compact(), tmp_path / "bad.pt2")
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A trained MLP on the embedded digits, pruned with and without rounding."""
    pytest.importorskip("sklearn")
    out = tmp_path_factory.mktemp("deploy")
    assert main(["train", "--model", "mlp", "--dataset", "digits", "--sparsity", "1e-2", "--bn-init", "0.5",
                 "--epochs", "2", "--out", str(out / "run"), "--no-progress"]) == 0
    assert main(["prune", str(out / "run" / "last.pt"), "--percent", "0.5", "--target", "cpu",
                 "--out", str(out / "exact.pt")]) == 0
    assert main(["prune", str(out / "run" / "last.pt"), "--percent", "0.5", "--target", "gpu",
                 "--out", str(out / "rounded.pt")]) == 0
    return out


def test_prune_rounds_for_a_gpu_target_by_default(checkpoints, capsys):
    from netslim.checkpoint import load_model

    exact, _ = load_model(checkpoints / "exact.pt")
    rounded, _ = load_model(checkpoints / "rounded.pt")
    widths = lambda m: [m.hidden[k].num_features for k in (1, 4)]  # noqa: E731
    assert all(w % 8 == 0 for w in widths(rounded)) and sum(widths(rounded)) >= sum(widths(exact))
    assert sum(widths(exact)) == 400  # exactly half of 500 + 300


def test_cli_export_for_gpu_warns_about_odd_widths_and_writes_a_bf16_program(checkpoints, tmp_path, capsys):
    code = main(["export", str(checkpoints / "exact.pt"), "--target", "gpu", "--program", str(tmp_path / "m.pt2")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "not multiples of 8" in out and "--round-to 8" in out and "bf16, channels_last" in out
    program = torch.export.load(str(tmp_path / "m.pt2")).module()
    assert {p.dtype for p in program.parameters()} == {torch.bfloat16}
    code = main(["export", str(checkpoints / "rounded.pt"), "--target", "gpu", "--program", str(tmp_path / "r.pt2")])
    out, _ = capsys.readouterr()
    assert code == 0 and "not multiples" not in out


def test_cli_export_bad_requests_exit_2_in_one_line(checkpoints, tmp_path, capsys):
    code = main(["export", str(checkpoints / "exact.pt")])
    _, err = capsys.readouterr()
    assert code == 2 and "give at least one of" in err and len(err.strip().splitlines()) == 1
    if not torch.cuda.is_available():
        code = main(["export", str(checkpoints / "exact.pt"), "--target", "gpu", "--aoti", str(tmp_path / "a.pt2")])
        _, err = capsys.readouterr()
        assert code == 2 and "needs a CUDA GPU" in err and len(err.strip().splitlines()) == 1


def test_deploy_says_how_to_give_the_input_it_needs():
    """A model that declares no input size: the message names deploy's own argument, which then works."""
    model = randomize_bn(netslim.models.create("vgg11", widths=WIDTHS)).eval()
    del model.input_size
    with pytest.raises(ValueError, match=r"pass example_input=torch.zeros\(1, C, H, W\)") as e:
        deploy(model)
    assert "input_size=(C, H, W)" not in str(e.value).split("(or")[0]
    with pytest.raises(ValueError, match=r"pass example_input="):
        netslim.plan_pruning(model, 0.5)  # the analysis' message names the argument its callers take
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(deploy(model, example_input=x)(x), model(x), atol=1e-4)
