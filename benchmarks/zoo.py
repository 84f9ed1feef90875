"""Real models from timm, torchvision, Ultralytics and smp: netslim beside Torch-Pruning's BN-scale pruner.

For each model, built by its own library with random weights (nothing downloaded): BN statistics
randomized from a seeded generator (``common.randomize_bn``), then γ = β = 0 on a random 40% of every
BN's channels (seeded). Such a channel carries 0, so a prune ratio that only all-zero channels satisfy
must leave every output as it was:

* netslim: ``trace_channels`` + ``plan_pruning(percent=(z + 0.5) / N)`` + ``apply_plan`` (timed apart),
  z the prunable channels whose |γ| is 0 in every BN sharing them, N all prunable channels.
* Torch-Pruning: ``tp.pruner.BNScalePruner(model, example, tp.importance.BNScaleImportance(),
  global_pruning=True, pruning_ratio=<the fraction netslim removed>, ignored_layers=<output layers>)``
  + ``step()``, the output layers ignored as its examples do.

Both pruned models are compared with the original on the example input and on another size and batch:
max over output tensors of max|pruned - original| / max|original| (exact: <= 1e-4, with fewer
parameters). A model without BN must be refused in one line. Recorded: status (the first line of an
error), CPU and wall time, parameters and BN channels after/before, channels removed.
Each model runs in its own process (``--worker``), so a tool that crashes, exhausts memory (each tool
gets a soft address-space limit) or hangs (a time limit per run, and per check after it) is recorded
as such and the sweep goes on. Needs timm, torchvision, ultralytics, segmentation-models-pytorch and
torch-pruning; a model whose package is missing is recorded as not built.

Usage: python benchmarks/zoo.py [--full | --quick | --smoke] [--threads N] [--jobs N] [--out DIR]
(--jobs: model processes side by side. run_all.py --full runs it where these packages are installed.)
"""

from __future__ import annotations

import copy
import json
import os
import resource
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.utils import _pytree as pytree

import netslim
from common import Goal, begin, finish, note_lines, randomize_bn, record, summaries, write_result
from netslim.plan import channel_scores

NAME = "zoo"
HERE = Path(__file__).resolve().parent
MARK = "ZOO-RESULT "
TOOLS = ("netslim", "torch_pruning")
TOLERANCE = 1e-4  # relative, per output tensor
ZEROED = 0.4  # the fraction of every BN's channels given γ = β = 0

TIMM = ["resnet18", "resnet26", "resnet50", "resnet18d", "resnext26ts", "seresnet18", "ecaresnet26t", "skresnet18",
        "resnest14d", "res2net50_14w_8s", "efficientnet_b0", "efficientnet_b1", "tf_efficientnet_b0",
        "efficientnetv2_rw_t", "mixnet_s", "mobilenetv2_050", "mobilenetv2_100", "mobilenetv3_large_100",
        "mobilenetv4_conv_small", "mnasnet_100", "semnasnet_100", "fbnetc_100", "spnasnet_100", "tinynet_a",
        "lcnet_050", "hardcorenas_a", "ghostnet_100", "rexnet_100", "densenet121", "dla34", "dpn68", "cspdarknet53",
        "cspresnet50", "cs3darknet_s", "darknet53", "vovnet39a", "ese_vovnet19b_dw", "regnetx_002", "regnety_002",
        "regnety_008", "hrnet_w18_small", "repvgg_a0", "mobileone_s0", "selecsls42b", "gernet_s",
        "convnext_atto", "nf_resnet26",  # these two have no BN: refused
        # transformer-with-BN hybrids (fixed-resolution attention at the size after "@")
        "hgnetv2_b0", "levit_128s@224", "efficientformer_l1@224", "efficientformerv2_s0@224", "mobilevit_xxs",
        "efficientvit_m0", "efficientvit_b0", "tiny_vit_5m_224@224", "repvit_m1", "fastvit_t8", "visformer_tiny@224",
        "coatnet_nano_rw_224@224", "maxvit_nano_rw_256@256", "botnet26t_256@256", "halonet26t@256",
        "mobilenetv4_hybrid_medium",
        # more convolutional families
        "ghostnetv2_100", "cspresnext50", "regnetz_b16", "gcresnet33ts", "seresnext26d_32x4d", "skresnext50_32x4d",
        "resnetv2_50", "inception_v3@96", "xception41", "res2next50", "dla60x_c", "inception_next_tiny"]
TORCHVISION = ["resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_small",
               "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0", "mnasnet1_0", "regnet_y_400mf",
               "densenet121", "googlenet", "squeezenet1_0",  # squeezenet has no BN
               "regnet_x_400mf", "shufflenet_v2_x0_5", "efficientnet_v2_s"]
VIDEO = ["r3d_18", "mc3_18", "r2plus1d_18"]  # (batch, 3, 8 frames, size, size); S3D needs 16 frames at 224 px
FULL = ([f"timm/{n}" for n in TIMM] + [f"torchvision/{n}" for n in TORCHVISION]
        + ["torchvision-seg/fcn_resnet50", "torchvision-seg/deeplabv3_mobilenet_v3_large",
           "torchvision-seg/lraspp_mobilenet_v3_large", "torchvision-det/resnet18_fpn",
           "torchvision-det/mobilenet_v3_large_fpn"]
        + [f"torchvision-video/{n}" for n in VIDEO]
        + [f"ultralytics/{n}.yaml" for n in ("yolov8n", "yolo11n", "yolov8n-seg", "yolo11n-seg", "yolov5nu",
                                             "yolov8n-cls", "yolov3-tinyu", "yolov6n", "yolov9t", "yolov10n", "yolo12n",
                                             "yolo26n", "yolov8n-pose", "yolov8n-obb", "yolo11n-pose", "yolo11n-obb",
                                             "yolo11n-cls", "rtdetr-l")]
        + ["smp/Unet/resnet34", "smp/FPN/efficientnet-b0", "smp/DeepLabV3Plus/resnet18", "smp/Linknet/mobilenet_v2",
           "smp/Unet/mobilenet_v2", "smp/UnetPlusPlus/resnet18", "smp/MAnet/resnet18", "smp/PAN/resnet18@128",
           "smp/PSPNet/resnet18", "smp/DeepLabV3/resnet18", "smp/UPerNet/resnet18", "smp/Segformer/resnet18"])
QUICK = ["timm/efficientnet_b0", "timm/tf_efficientnet_b0", "timm/densenet121", "timm/mobilenetv3_large_100",
         "timm/convnext_atto", "torchvision/resnet18", "torchvision-seg/lraspp_mobilenet_v3_large",
         "ultralytics/yolov8n.yaml", "ultralytics/yolo11n-seg.yaml", "smp/FPN/efficientnet-b0"]
COMMON = {"zeroed": ZEROED, "seed": 0, "memory_gb": 6, "size": 64, "other": 96, "warmup": 0, "repeats": 1}
SETTINGS = {
    "full": {**COMMON, "models": FULL, "limit_s": 120},
    "quick": {**COMMON, "models": QUICK, "limit_s": 60},
    "smoke": {**COMMON, "models": ["torchvision/resnet18"], "limit_s": 60},
}


# -- the models, as their libraries build them --

def build(name: str) -> nn.Module:
    """``<library>/<model>[@size]``: random weights from the library's own constructor, never downloading weights."""
    source, _, rest = name.partition("@")[0].partition("/")
    if source == "timm":
        import timm

        return timm.create_model(rest, pretrained=False)
    if source in ("torchvision", "torchvision-video"):
        import torchvision

        return torchvision.models.get_model(rest, weights=None)
    if source == "torchvision-seg":
        import torchvision

        return torchvision.models.get_model(rest, weights=None, weights_backbone=None)
    if source == "torchvision-det":  # a detector's backbone + FPN, with trainable BN (the default is frozen BN)
        from torchvision.models.detection import backbone_utils

        backbone = rest.removesuffix("_fpn")
        if backbone.startswith("resnet"):
            return backbone_utils.resnet_fpn_backbone(backbone_name=backbone, weights=None,
                                                      norm_layer=nn.BatchNorm2d, trainable_layers=5)
        return backbone_utils.mobilenet_backbone(backbone_name=backbone, weights=None, fpn=True,
                                                 norm_layer=nn.BatchNorm2d, trainable_layers=6)
    if source == "ultralytics":
        from ultralytics.nn import tasks

        kinds = {"-seg": tasks.SegmentationModel, "-cls": tasks.ClassificationModel, "-pose": tasks.PoseModel,
                 "-obb": tasks.OBBModel, "rtdetr": tasks.RTDETRDetectionModel}
        kind = next((k for tag, k in kinds.items() if tag in rest), tasks.DetectionModel)
        return kind(rest, verbose=False)
    if source == "smp":
        import segmentation_models_pytorch as smp

        arch, encoder = rest.split("/")
        return getattr(smp, arch)(encoder_name=encoder, encoder_weights=None)
    raise ValueError(f"unknown model source in {name!r}")


def example_inputs(name: str, cfg: dict, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """The example input (batch 1) and another (batch 2, another size unless the model's attention is built for
    one resolution, given after "@"); video models read 8 frames."""
    size = name.partition("@")[2]
    sizes = (int(size), int(size)) if size else (cfg["size"], cfg["other"])
    frames = (8,) if name.startswith("torchvision-video/") else ()
    return {key: torch.randn(batch, 3, *frames, s, s, generator=generator)
            for key, batch, s in (("example", 1, sizes[0]), ("other", 2, sizes[1]))}


def output_layers(name: str, model: nn.Module) -> list[nn.Module]:
    """The layers producing the model's outputs, which Torch-Pruning is told to leave alone."""
    source = name.partition("/")[0]
    if source == "timm":
        head = model.get_classifier()
        return [head] if isinstance(head, nn.Module) and any(True for _ in head.parameters()) else []
    if source in ("torchvision", "torchvision-video"):
        return [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv3d))][-1:]
    if source == "torchvision-seg":  # the last conv of each classifier (LR-ASPP has two)
        heads = [model.classifier] + ([model.aux_classifier] if getattr(model, "aux_classifier", None) else [])
        convs = [m for h in heads for m in h.modules() if isinstance(m, nn.Conv2d)]
        return [m for m in convs if m.out_channels == convs[-1].out_channels]
    if source == "torchvision-det":
        return list(model.fpn.layer_blocks)
    if source == "ultralytics":
        return [model.model[-1]]  # Detect / Segment / Classify
    if source == "smp":
        return [model.segmentation_head]
    return []


def zero_channels(model: nn.Module, fraction: float, seed: int) -> nn.Module:
    """γ = β = 0 on a random ``fraction`` of every BN's channels: these channels carry 0 (act(0) = 0 for the
    activations here), so removing exactly them must leave every output as it was."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm) and m.weight is not None:
                chosen = torch.randperm(m.num_features, generator=g)[:round(fraction * m.num_features)]
                m.weight[chosen] = 0.0
                m.bias[chosen] = 0.0
    return model


# -- one model, in its own process --

def leaves(out) -> list[torch.Tensor]:
    return [t for t in pytree.tree_leaves(out) if isinstance(t, torch.Tensor)]


def max_relative_error(out, ref) -> float:
    a, b = leaves(out), leaves(ref)
    if not a or len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b, strict=True)):
        return float("inf")
    return max(float((x - y).abs().max() / y.abs().max().clamp_min(1e-12)) for x, y in zip(a, b, strict=True))


def errors_against(model: nn.Module, reference: dict, inputs: dict, stage: list[str]) -> dict:
    errors = {}
    with torch.no_grad():
        for k, x in inputs.items():
            stage.append(f"forward of the pruned model at {tuple(x.shape)}")
            errors[k] = max_relative_error(model(x), reference[k])
    return errors


def bn_channels(model: nn.Module) -> int:
    return sum(m.num_features for m in model.modules() if isinstance(m, _BatchNorm))


def sizes(model: nn.Module, pruned: nn.Module) -> dict:
    p0, p1 = netslim.count_params(model), netslim.count_params(pruned)
    b0, b1 = bn_channels(model), bn_channels(pruned)
    return {"params": [p0, p1], "params_ratio": p1 / p0, "bn_channels": [b0, b1],
            "bn_channels_ratio": b1 / b0 if b0 else None}


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def lap(stages: dict, key: str, start: tuple[float, float]) -> tuple[float, float]:
    now = clock()
    stages.setdefault(key, {"wall": [], "cpu": []})
    stages[key]["wall"].append(now[0] - start[0])
    stages[key]["cpu"].append(now[1] - start[1])
    return now


def timings(stages: dict) -> dict:
    """``seconds`` / ``cpu_seconds``: the median wall / process CPU time of a whole run; ``stages``: every
    stage's summaries. With one thread on a shared machine, CPU time leaves out waiting for a core."""
    stats = {k: summaries(v) for k, v in stages.items()}
    return {"seconds": stats["total"]["wall"]["median"], "cpu_seconds": stats["total"]["cpu"]["median"],
            "stages": stats}


def run_netslim(name: str, model: nn.Module, inputs: dict, cfg: dict, stage: list[str]) -> dict:
    """Prune exactly the all-zero channels: ``percent`` = (zero channels + 0.5) / prunable channels, so the
    floor(N * percent) channels of smallest |γ| (netslim's score: max over the BNs sharing a channel) are the
    zero ones; a channel shared with a BN where it is not zero scores > 0 and stays."""
    stages: dict = {}
    for r in range(cfg["warmup"] + cfg["repeats"]):
        timed = stages if r >= cfg["warmup"] else {}
        signal.alarm(cfg["limit_s"])  # the limit is per run
        forget = getattr(netslim.graph, "clear_cache", None)
        if forget is not None:  # every run analyses the model anew, not from netslim's per-model cache
            forget()
        t = start = clock()
        stage.append("analysis")
        graph = netslim.trace_channels(model, inputs["example"])
        t = lap(timed, "analysis", t)
        stage.append("planning")
        scores = channel_scores(model, graph)
        zeros = sum(v == 0 for v in scores.values())
        if not zeros:
            raise ValueError(f"no all-zero channel among {len(scores)} prunable ones")
        plan = netslim.plan_pruning(model, (zeros + 0.5) / len(scores), graph=graph)
        t = lap(timed, "planning", t)
        stage.append("surgery")
        compact = netslim.apply_plan(model, plan, graph=graph)
        lap(timed, "surgery", t)
        lap(timed, "total", start)
    signal.alarm(cfg["limit_s"])
    errors = errors_against(compact.eval(), inputs["reference"], inputs["x"], stage)
    stage.append("counting")
    unused = sum(p.numel() for path in graph.unused for p in model.get_submodule(path).parameters(recurse=False))
    return {"status": "ok", **timings(stages), **sizes(model, compact), "params_unused": unused,
            "percent": plan.achieved_percent,
            "channels_pruned": plan.pruned_channels, "channels_zero": zeros, "channels_prunable": plan.total_channels,
            "errors": errors, "max_relative_error": max(errors.values()), "bn_layers": len(graph.bns),
            "guarded": plan.guarded, "fixed_notes": len(graph.notes), "first_notes": graph.notes[:3]}


def run_torch_pruning(name: str, model: nn.Module, inputs: dict, cfg: dict, stage: list[str]) -> dict:
    """Torch-Pruning's BN-scale pruner, global, asked for the fraction of channels netslim found zero."""
    import torch_pruning as tp

    stages: dict = {}
    for r in range(cfg["warmup"] + cfg["repeats"]):
        timed = stages if r >= cfg["warmup"] else {}
        pruned = copy.deepcopy(model).eval()
        signal.alarm(cfg["limit_s"])  # the limit is per run
        t = start = clock()
        stage.append("analysis")
        pruner = tp.pruner.BNScalePruner(pruned, inputs["example"], tp.importance.BNScaleImportance(),
                                         global_pruning=True, pruning_ratio=cfg["ratio"],
                                         ignored_layers=output_layers(name, pruned))
        t = lap(timed, "analysis", t)
        stage.append("pruning")
        pruner.step()
        lap(timed, "pruning", t)
        lap(timed, "total", start)
    out = timings(stages)
    signal.alarm(cfg["limit_s"])
    errors = errors_against(pruned.eval(), inputs["reference"], inputs["x"], stage)
    stage.append("counting")
    return {**out, "status": "ok", **sizes(model, pruned), "errors": errors,
            "max_relative_error": max(errors.values())}


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


class _Timeout(BaseException):  # not an Exception: a library's own ``except Exception`` must not swallow it
    pass


def _alarm(signum, frame):
    raise _Timeout


def guarded(fn, cfg: dict) -> dict:
    """``fn(stage)`` under a time limit (SIGALRM) and a soft address-space limit; a failure becomes a record
    naming the stage ``fn`` last appended to ``stage``."""
    stage: list[str] = ["start"]
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    base = _address_space()
    limit = base + int(cfg["memory_gb"] * 2**30)
    if hard == resource.RLIM_INFINITY or limit < hard:
        resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    previous = signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(cfg["limit_s"])
    started = time.perf_counter()
    try:
        return fn(stage)
    except _Timeout:
        grown = (_address_space() - base) / 2**30
        return {"status": "timeout", "stage": stage[-1],
                "error": f"no result after {cfg['limit_s']} s (address space grew by {grown:.1f} GB)"}
    except MemoryError:
        return {"status": "failed", "stage": stage[-1],
                "error": f"MemoryError: needed more than {cfg['memory_gb']} GB of further address space"}
    except Exception as e:
        return {"status": "failed", "stage": stage[-1], "error": first_line(e),
                "after_s": round(time.perf_counter() - started, 2)}
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _address_space() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmSize:"):
            return int(line.split()[1]) * 1024
    return 0


def worker(name: str, cfg: dict) -> None:
    """Build one model and run both tools on it, printing one result line per tool as it finishes."""
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(cfg["seed"])
    try:
        model = randomize_bn(build(name), seed=cfg["seed"]).eval()
        zero_channels(model, cfg["zeroed"], cfg["seed"] + 2)
        x = example_inputs(name, cfg, torch.Generator().manual_seed(cfg["seed"] + 1))
        with torch.no_grad():
            reference = {k: [t.clone() for t in leaves(model(v))] for k, v in x.items()}
            # how far the model's own outputs move when its input moves by 1e-6 (relative): where that is large
            # (a top-k selection of queries), rounding differences of a pruned model move them as far
            sensitivity = {k: max_relative_error(model(v * (1 + 1e-6)), reference[k]) for k, v in x.items()}
    except Exception as e:
        print(MARK + json.dumps({"tool": "build", "status": "failed", "error": first_line(e)}), flush=True)
        return
    has_bn = any(isinstance(m, _BatchNorm) and m.weight is not None for m in model.modules())
    inputs = {"example": x["example"], "x": x, "reference": {k: tuple(v) for k, v in reference.items()}}
    result = guarded(lambda stage: run_netslim(name, model, inputs, cfg, stage), cfg)
    if not has_bn and result["status"] == "failed":  # the correct outcome: one line, nothing to prune
        result["status"] = "refused"
    print(MARK + json.dumps({"tool": "netslim", "has_bn": has_bn, "sensitivity": sensitivity, **result},
                            default=str), flush=True)
    cfg = {**cfg, "ratio": result["percent"] if result["status"] == "ok" else cfg["zeroed"]}
    result = guarded(lambda stage: run_torch_pruning(name, model, inputs, cfg, stage), cfg)
    print(MARK + json.dumps({"tool": "torch_pruning", **result}, default=str), flush=True)


def measure(name: str, cfg: dict) -> dict:
    """Run ``worker`` for ``name`` in a fresh process; a tool that left no line crashed or hung."""
    env = {**os.environ, "YOLO_OFFLINE": "1", "OMP_NUM_THREADS": str(cfg["threads"])}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", name, json.dumps(cfg)]
    runs = cfg["warmup"] + cfg["repeats"]
    backstop = 2 * runs * cfg["limit_s"] + 120  # per-run limits are enforced inside; this catches a hang in C code
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=backstop, env=env, cwd=HERE)
        stdout, stderr, code = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else e.stdout or ""
        stderr, code = "", None
    found = {}
    for line in stdout.splitlines():
        if line.startswith(MARK):
            rec = json.loads(line[len(MARK):])
            found[rec.pop("tool")] = rec
    row = {"model": name}
    if "build" in found:
        return {**row, "built": False, "error": found["build"]["error"]}
    for tool in TOOLS:
        if tool not in found:
            tail = [x for x in stderr.strip().splitlines() if x.strip()][-1:] or [""]
            found[tool] = ({"status": "timeout", "error": f"process killed after {backstop} s"} if code is None else
                           {"status": "crashed", "error": f"exit code {code}: {tail[0][:200]}"})
        row[tool] = found[tool]
    return {**row, "built": True}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--worker"]:
        worker(argv[1], json.loads(argv[2]))
        return {}
    jobs = 1
    if "--jobs" in argv:  # models measured side by side (each in its own one-thread process)
        i = argv.index("--jobs")
        jobs = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    skip = 0
    if "--skip" in argv:  # leave out the mode's first N models (a sweep split over two processes)
        i = argv.index("--skip")
        skip = int(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    run = begin(__doc__, argv, SETTINGS)
    run.settings = {**run.settings, "jobs": jobs, "models": run.settings["models"][skip:]}
    run.argv = run.argv + ["--jobs", str(jobs)] if jobs > 1 else run.argv
    cfg = {**run.settings, "threads": run.threads}
    rows: dict[str, dict] = {}

    lock = threading.Lock()

    def one(name: str) -> None:
        started = time.perf_counter()
        row = measure(name, cfg)
        with lock:
            rows[name] = row
            print(f"{name:<40} {_line(row)} ({time.perf_counter() - started:.0f} s)", flush=True)
            done = [rows[n] for n in cfg["models"] if n in rows]  # a partial record, in case the sweep is stopped
            write_result(record(NAME, run.args, run.argv, run.threads, {**cfg, "partial": True},
                                {"models": done, "versions": {}}, [], run.started), run.args.out)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(one, cfg["models"]))
    ordered = [rows[n] for n in cfg["models"]]
    return finish(NAME, run, {"models": ordered, "versions": _versions()}, _summary(ordered, cfg))


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "torchvision", "timm", "ultralytics", "segmentation-models-pytorch", "torch-pruning"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = None
    return out


def _line(row: dict) -> str:
    if not row["built"]:
        return f"not built: {row['error']}"
    parts = []
    for tool in TOOLS:
        r = row[tool]
        if r["status"] == "ok":
            parts.append(f"{tool} {r['cpu_seconds']:.2f}s CPU params {r['params_ratio']:.2f} "
                         f"err {r['max_relative_error']:.1e}")
        else:
            parts.append(f"{tool} {r['status']}: {r['error'][:70]}")
    return " | ".join(parts)


def exact(r: dict) -> bool:
    """Ran, every output within 1e-4 of the original's at both sizes, and fewer parameters."""
    return r["status"] == "ok" and r["max_relative_error"] is not None and r["max_relative_error"] <= TOLERANCE \
        and r["params_ratio"] < 1


def _summary(rows: list[dict], cfg: dict) -> list[str]:
    built = [r for r in rows if r["built"]]
    with_bn = [r for r in built if r["netslim"].get("has_bn", True)]
    without = [r for r in built if r not in with_bn]
    ours = [r for r in with_bn if exact(r["netslim"])]
    refused = [r for r in without if r["netslim"]["status"] == "refused"]
    theirs = [r for r in with_bn if r["torch_pruning"]["status"] == "ok"]
    theirs_exact = [r for r in theirs if exact(r["torch_pruning"])]
    failed = [r for r in with_bn if r["torch_pruning"]["status"] != "ok"]
    both = [r for r in ours if r in theirs]
    notes = [f"netslim exact and reduced on {len(ours)}/{len(with_bn)} models with BN, refused the {len(refused)} "
             f"without BN (of {len(without)}); Torch-Pruning ran on {len(theirs)} (exact and reduced on "
             f"{len(theirs_exact)}), failed on {len(failed)} (crash, error or time limit); "
             f"{len(built)} of {len(rows)} models built."]
    for clock_name, key in (("CPU", "cpu_seconds"), ("wall-clock", "seconds")):
        if not both:
            break
        ours_s = sum(r["netslim"][key] for r in both)
        theirs_s = sum(r["torch_pruning"][key] for r in both)
        per_model = statistics.median(r["netslim"][key] / r["torch_pruning"][key] for r in both)
        notes.append(f"On the {len(both)} models both ran, {clock_name} time: netslim {ours_s:.1f} s in all, "
                     f"Torch-Pruning {theirs_s:.1f} s (ratio netslim / Torch-Pruning {ours_s / theirs_s:.2f}; "
                     f"median of the per-model ratios {per_model:.2f}).")
    return notes


# -- the BENCHMARKS.md section (benchmarks/render.py adds the heading, its freshness and the provenance) --

def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.0f}%"


def _err(r: dict) -> str:
    e = r["errors"]
    return " / ".join("inf" if e[k] is None else f"{e[k]:.0e}" for k in ("example", "other"))


def _cell(r: dict) -> list[str]:
    if r["status"] != "ok":
        where = f" ({r['stage']})" if r.get("stage") else ""
        text = r["error"][:90].replace("|", "\\|")
        return [f"{r['status']}{where}: `{text}`", "", "", ""]
    return ["exact" if exact(r) else "**not exact**" if r["params_ratio"] < 1 else "**not reduced**",
            f"{r['cpu_seconds']:.2f} ({r['seconds']:.2f})", f"-{_pct(1 - r['params_ratio'])}", _err(r)]


def _moved(r: dict) -> str:
    moved = r.get("sensitivity") or {}
    return " / ".join(f"{moved[k]:.0e}" if k in moved else "?" for k in ("example", "other"))


def _of_run(r: dict) -> str:
    ran = r["params"][0] - r["params_unused"]
    return f"-{100 * (r['params'][0] - r['params'][1]) / ran:.1f}% of those that run"


def markdown(rec: dict) -> str:
    s = rec["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in rec["results"]["versions"].items() if v)
    lines = ["Model definitions nobody here wrote, built by their own libraries with random weights (nothing "
             "downloaded); BN statistics randomized from a seeded generator, then γ = β = 0 on a random "
             f"{100 * s['zeroed']:.0f}% of every BN's channels. Each tool is asked for a prune ratio that only the "
             "all-zero channels satisfy: netslim `plan_pruning(percent=(z + 0.5) / N)`, z the prunable channels whose "
             "|γ| is 0 in every BN sharing them, N all prunable channels (analysis + plan + surgery); Torch-Pruning "
             "`BNScalePruner` with `BNScaleImportance`, global, `pruning_ratio` = the fraction netslim removed, "
             "output layers ignored (classifier, Detect/Segment/Classify head, segmentation head, FPN outputs). "
             "Removing only zero channels must leave every output as it was: *exact* = max over output tensors "
             "of max|pruned - original| / max|original| <= 1e-4 on the 1x3x"
             f"{s['size']}x{s['size']} example and on a 2x3x{s['other']}x{s['other']} input (a model named "
             "`@S` has attention built for one resolution: SxS for both, batch 1 and 2; video models read 8 frames), "
             "with fewer parameters. Time: process CPU time (wall clock in brackets) of one run, "
             f"{rec['torch_set_num_threads']} thread per model process, {s.get('jobs', 1)} model processes side by "
             f"side. Limits per tool: {s['limit_s']} s per run, {s['memory_gb']} GB of extra address space. This "
             "replaces the earlier 50%-by-|γ| sweep (whose fidelity could only be measured against a masked model). "
             "Needs timm, torchvision, ultralytics, segmentation-models-pytorch and torch-pruning installed.\n",
             "| model | netslim | time (s): CPU (wall) | params | channels removed (of prunable) "
             "| max rel. error (example / other) | Torch-Pruning | time (s): CPU (wall) | params "
             "| max rel. error (example / other) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for row in rec["results"]["models"]:
        if not row["built"]:
            lines.append(f"| {row['model']} | not built: `{row['error'][:90]}` |||||||||")
            continue
        ours = row["netslim"]
        cells = _cell(ours)
        share = f"{_pct(ours['channels_pruned'] / ours['channels_prunable'])} of {ours['channels_prunable']}" \
            if ours["status"] == "ok" else ""
        if ours["status"] == "refused":
            cells[0] = f"refused (no BN): `{ours['error'][:90]}`"
        lines.append(f"| {row['model']} | " + " | ".join(cells[:3]) + f" | {share} | {cells[3]} | "
                     + " | ".join(_cell(row["torch_pruning"])) + " |")
    lines += ["", f"Versions: {versions}.", ""] + _explanations(rec["results"]["models"])
    return "\n".join(lines) + "\n" + note_lines(rec)


def _explanations(rows: list[dict]) -> list[str]:
    """Where netslim kept channels: ops its analysis could not narrow; models under 3% smaller; layers never run."""
    ours = {r["model"]: r["netslim"] for r in rows if r["built"] and r["netslim"]["status"] == "ok"}
    fixed = {m: r for m, r in ours.items() if r["fixed_notes"]}
    lines = []
    off = {m: r for m, r in ours.items() if r.get("has_bn", True) and not exact(r)}
    if off:
        lines += ["Models where netslim's compact model is not within 1e-4 of the original, beside how far the "
                  "original itself moves when its input moves by 1e-6 (relative):", ""]
        lines += [f"- {m}: error {_err(r)}; the original moves {_moved(r)}" for m, r in off.items()] + [""]
    small = {m: r for m, r in ours.items() if r["params_ratio"] > 0.97}
    if small:
        lines += ["Models netslim made less than 3% smaller (parameters removed; zero channels among the prunable "
                  "ones; the first note):", ""]
        lines += [f"- {m}: -{100 * (1 - r['params_ratio']):.1f}%, {r['channels_zero']} of {r['channels_prunable']}"
                  f"{'; ' + r['first_notes'][0] if r['first_notes'] else ''}" for m, r in small.items()] + [""]
    unused = {m: r for m, r in ours.items() if r.get("params_unused")}
    if unused:
        lines += ["Models with layers their forward never runs (their parameters stay; the reduction of the "
                  "parameters that run in brackets):", ""]
        lines += [f"- {m}: {100 * r['params_unused'] / r['params'][0]:.0f}% of the parameters never run; "
                  f"-{100 * (1 - r['params_ratio']):.1f}% ({_of_run(r)})" for m, r in unused.items()] + [""]
    if fixed:
        lines += ["Channels netslim's analysis kept (`trace_channels(...).notes`; how many, and the first):", ""]
        lines += [f"- {m}: {r['fixed_notes']}, e.g. {r['first_notes'][0]}" for m, r in fixed.items()] + [""]
    return lines


def goals(rec: dict) -> list[Goal]:
    """The summary row: models with BN pruned exactly (only the all-zero channels gone), beside Torch-Pruning."""
    with_bn = [r for r in rec["results"]["models"] if r["built"] and r["netslim"].get("has_bn", True)]
    ours = sum(exact(r["netslim"]) for r in with_bn)
    ran = [r for r in with_bn if r["torch_pruning"]["status"] == "ok"]
    return [Goal("third-party models: only the all-zero channels removed, outputs unchanged (1e-4)",
                 f"{len(with_bn)} definitions with BN from timm, torchvision, Ultralytics, smp (random weights)",
                 f"exact and smaller on {ours} of {len(with_bn)}; Torch-Pruning ran on {len(ran)}, exact on "
                 f"{sum(exact(r['torch_pruning']) for r in ran)}")]


if __name__ == "__main__":
    main()
