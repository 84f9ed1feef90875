"""Does JPEG decoding keep up with training? Streaming ImageNet-size JPEGs on the CPU.

Synthetic JPEGs of ImageNet's size (``common.synthetic_jpegs``: 300-640 x 240-480 pixels, ~90 KB) are
decoded to 224x224 training crops (random-resized-crop + flip), side by side in one run:

(a) per image, one thread: the reference recipe (PIL decodes the whole image, then the crop is
    resized: what torchvision's ``ImageFolder`` + ``RandomResizedCrop`` do) against netslim's
    ``decode_crop`` (PIL draft mode: the JPEG decoder skips DCT detail the crop discards), same boxes;
    and the same for evaluation crops at half the training resolution (draft mode applies when the
    image is at least twice the size it is resized to);
(b) ``StreamLoader`` epochs (normalized batches of 32): decoding in its background thread
    (``workers=1``) and in a pool of ``workers`` threads (PIL releases the GIL while decoding);
(c) overlap: a consumer that computes for a fixed time per batch (a matmul loop timed alone, 1.5x as
    long as decoding one batch in one thread: training slower than decoding, as on a GPU with enough
    cores), the loader decoding ahead in one thread: epoch time against compute alone and decoding
    alone. Perfect overlap hides the decoding (epoch = compute); none adds it. The first batch of an
    epoch cannot overlap (nothing to compute yet): 32 batches make that 3% of it.

The GPU counterpart (nvJPEG through torchvision) is part (h) of benchmarks/gpu.py.

Usage: python benchmarks/jpeg_stream.py [--full | --quick | --smoke] [--threads N]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path

import torch

from common import Goal, begin, finish, note_lines, summary, synthetic_jpegs
from netslim.data import StreamLoader, jpeg, list_image_folder, stream

NAME = "jpeg_stream"
SETTINGS = {
    "full": {"images": 1024, "batch": 32, "size": 224, "repeats": 3, "workers": [1, 2]},
    "quick": {"images": 256, "batch": 16, "size": 224, "repeats": 2, "workers": [1, 2]},
    "smoke": {"images": 16, "batch": 8, "size": 64, "repeats": 1, "workers": [1]},
}


def reference_decode_crop(path: Path, draw, size: int):
    """The reference recipe: decode the whole JPEG, then crop and resize (no draft mode)."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        left, top, w, h = stream.crop_box(*img.size, draw)
        return img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))


def reference_decode_eval(path: Path, resize: int, size: int):
    """The reference evaluation recipe: decode the whole JPEG, resize the shorter side, center crop."""
    from PIL import Image

    with Image.open(path) as img:
        img = img.convert("RGB")
        nw, nh = jpeg.resized_shape(*img.size, resize)
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - size) // 2, (nh - size) // 2
        return img.crop((left, top, left + size, top + size))


def per_image(files: list[Path], size: int, repeats: int) -> dict:
    draws = torch.rand(len(files), 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).tolist()
    eval_size = max(1, size // 2)  # e.g. 112 of 128 (a reduced-resolution evaluation): draft mode applies
    resize = round(eval_size * 256 / 224)
    variants = {"reference_full_decode": lambda p, d: reference_decode_crop(p, d, size),
                "netslim_draft_decode": lambda p, d: stream.decode_crop(p, d, size),
                "eval_reference_full_decode": lambda p, d: reference_decode_eval(p, resize, eval_size),
                "eval_netslim_draft_decode": lambda p, d: jpeg.decode_one(p, resize, eval_size)}
    out = {}
    for name, fn in variants.items():
        samples = []
        for _ in range(repeats):
            t = time.perf_counter()
            for p, d in zip(files, draws, strict=True):
                fn(p, d)
            samples.append(time.perf_counter() - t)
        out[name] = {"seconds": summary(samples), "images_per_second": len(files) / statistics.median(samples)}
    out["draft_speedup"] = (out["netslim_draft_decode"]["images_per_second"]
                            / out["reference_full_decode"]["images_per_second"])
    out["eval_size"], out["eval_resize"] = eval_size, resize
    out["eval_draft_speedup"] = (out["eval_netslim_draft_decode"]["images_per_second"]
                                 / out["eval_reference_full_decode"]["images_per_second"])
    return out


def epoch_seconds(loader: StreamLoader, consume=None) -> float:
    t = time.perf_counter()
    for x, _ in loader:
        if consume is not None:
            consume(x)
    return time.perf_counter() - t


def loader_epochs(root: Path, s: dict) -> dict:
    files = list_image_folder(root, "train")
    files.image_size = s["size"]
    out = {}
    for workers in s["workers"]:
        with StreamLoader(files, s["batch"], workers=workers, prefetch=2) as loader:
            epoch_seconds(loader)  # warm-up: starts the decoding threads, fills the page cache
            samples = [epoch_seconds(loader) for _ in range(s["repeats"])]
        out[f"workers_{workers}"] = {"epoch_seconds": summary(samples),
                                     "images_per_second": len(files) / statistics.median(samples)}
    return out


def overlap(root: Path, s: dict, compute_per_batch: float) -> dict:
    """A consumer computing ~``compute_per_batch`` seconds per batch while the loader decodes ahead."""
    a, b = torch.randn(768, 768), torch.randn(768, 768)  # ~10 ms a call: few GIL hand-overs
    t = time.perf_counter()
    reps = 0
    while time.perf_counter() - t < 0.2:
        a @ b
        reps += 1
    per_matmul = 0.2 / reps
    count = max(1, round(compute_per_batch / per_matmul))

    def compute(_x=None):
        for _ in range(count):
            a @ b

    files = list_image_folder(root, "train")
    files.image_size = s["size"]
    batches = -(-len(files) // s["batch"])
    compute_alone = summary([_timed(lambda: [compute() for _ in range(batches)]) for _ in range(s["repeats"])])
    with StreamLoader(files, s["batch"], workers=1, prefetch=2) as loader:
        epoch_seconds(loader)
        decode_alone = summary([epoch_seconds(loader) for _ in range(s["repeats"])])
        together = summary([epoch_seconds(loader, compute) for _ in range(s["repeats"])])
    c, d, e = compute_alone["median"], decode_alone["median"], together["median"]
    return {"compute_alone": compute_alone, "decode_alone": decode_alone, "together": together,
            "epoch_over_compute": e / c, "epoch_over_sum": e / (c + d)}


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> dict:
    run = begin(__doc__, argv, SETTINGS)
    s = run.settings
    with tempfile.TemporaryDirectory() as tmp:
        made = synthetic_jpegs(tmp, s["images"])
        results = {"images": s["images"], "mean_kb": made["mean_kb"], "mean_side": made["mean_pixels"] ** 0.5,
                   "crop": s["size"], "batch": s["batch"]}
        results["per_image"] = per_image(made["files"], s["size"], s["repeats"])
        results["loader"] = loader_epochs(made["root"], s)
        per_batch = s["batch"] / results["loader"]["workers_1"]["images_per_second"]
        results["overlap"] = overlap(made["root"], s, 1.5 * per_batch)
    p, ov = results["per_image"], results["overlap"]
    ref = p["reference_full_decode"]["images_per_second"]
    notes = [f"(a) training crops, one thread: reference {ref:.0f} img/s, "
             f"draft mode {p['netslim_draft_decode']['images_per_second']:.0f} img/s ({p['draft_speedup']:.2f}x)",
             f"(a) evaluation at {p['eval_size']} (resize {p['eval_resize']}), one thread: reference "
             f"{p['eval_reference_full_decode']['images_per_second']:.0f} img/s, draft mode "
             f"{p['eval_netslim_draft_decode']['images_per_second']:.0f} img/s ({p['eval_draft_speedup']:.2f}x)",
             *[f"(b) StreamLoader, {k.replace('_', ' ')}: {v['images_per_second']:.0f} img/s"
               for k, v in results["loader"].items()],
             f"(c) overlap: epoch {ov['together']['median']:.2f} s with compute {ov['compute_alone']['median']:.2f} s"
             f" and decoding {ov['decode_alone']['median']:.2f} s: {ov['epoch_over_compute']:.2f}x the compute, "
             f"{ov['epoch_over_sum']:.2f}x their sum"]
    return finish(NAME, run, results, notes)


def markdown(rec: dict) -> str:
    """The body of this benchmark's BENCHMARKS.md section."""
    r = rec["results"]
    p, ov = r["per_image"], r["overlap"]
    lines = [f"{r['images']} synthetic JPEGs of ImageNet's size (mean {r['mean_kb']:.0f} KB, ~{r['mean_side']:.0f} px "
             f"per side) decoded to {r['crop']}x{r['crop']} random-resized crops (`netslim.data.StreamLoader`). "
             "GPU decoding (nvJPEG) is part (h) of the GPU section.\n",
             "| decoding, one thread | reference (full decode, then crop + resize) | netslim (draft mode) | ratio |",
             "|---|---|---|---|",
             f"| training crop {r['crop']} | {p['reference_full_decode']['images_per_second']:.0f} img/s | "
             f"{p['netslim_draft_decode']['images_per_second']:.0f} img/s | {p['draft_speedup']:.2f}x |",
             f"| evaluation crop {p['eval_size']} (resize {p['eval_resize']}) | "
             f"{p['eval_reference_full_decode']['images_per_second']:.0f} img/s | "
             f"{p['eval_netslim_draft_decode']['images_per_second']:.0f} img/s | {p['eval_draft_speedup']:.2f}x |",
             "", f"| StreamLoader epoch (batch {r['batch']}) | img/s |", "|---|---|"]
    for key, v in r["loader"].items():
        lines.append(f"| {key.replace('_', ' ')} | {v['images_per_second']:.0f} |")
    lines += ["", f"Overlap with a consumer computing {ov['compute_alone']['median']:.2f} s per epoch (decoding alone, "
              f"one thread: {ov['decode_alone']['median']:.2f} s): epoch {ov['together']['median']:.2f} s = "
              f"{ov['epoch_over_compute']:.2f}x the compute alone (1.00: decoding fully hidden), "
              f"{ov['epoch_over_sum']:.2f}x their sum.", ""]
    one, two = r["loader"].get("workers_1"), r["loader"].get("workers_2")
    if one and two:
        scaling = two["images_per_second"] / one["images_per_second"]
        lines += [f"On this machine two decoding threads give {scaling:.2f}x the images per second of one. With two "
                  "vCPUs, the consumer's compute, the decoding thread and the loader's normalization share the same "
                  "two cores, which the overlap figure includes. Draft mode pays off only where the image is at "
                  "least twice the size it is resized to (the evaluation row); a random-resized training crop of an "
                  "ImageNet-size image usually needs its full resolution. On a GPU machine the training step runs on "
                  "the GPU and the decoding threads have the cores to themselves: that case is part (h) of the GPU "
                  "section (unmeasured here).", ""]
    lines += [note_lines(rec)]
    return "\n".join(lines)


def goals(rec: dict) -> list[Goal]:
    """The summary row: how much decoding adds to an epoch of compute (1.00: fully hidden)."""
    r = rec["results"]
    return [Goal("JPEG streaming keeps up with training (epoch / compute alone, 1.00: decoding hidden)",
                 f"{r['images']} ImageNet-size JPEGs, StreamLoader beside a consumer (CPU)",
                 f"{r['overlap']['epoch_over_compute']:.2f}x the compute alone; draft decoding "
                 f"{r['per_image']['eval_draft_speedup']:.2f}x faster at evaluation size")]


if __name__ == "__main__":
    main()
