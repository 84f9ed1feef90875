"""A seeded, learnable detection dataset in the YOLO format: shapes on noisy backgrounds.

Four classes (rectangle, ellipse, triangle, cross), one to four objects per image in random sizes and
colours that stand out from where they lie, over a colour gradient with Gaussian noise; PNG images and YOLO label files
(``class cx cy w h``, normalised), with a ``data.yaml`` that Ultralytics' trainer and validator read
as they are. Written by the benchmarks and tests that need a detector's data without a download.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CLASSES = ("rectangle", "ellipse", "triangle", "cross")


def write_shapes_dataset(root: str | Path, train: int = 400, val: int = 100, size: int = 128, seed: int = 0) -> Path:
    """Write the dataset under ``root`` (``images/{train,val}``, ``labels/{train,val}``) and return its
    ``data.yaml``; an existing complete dataset with the same settings is kept."""
    from PIL import Image, ImageDraw

    root = Path(root)
    stamp = root / ".settings"
    settings = f"v2 train={train} val={val} size={size} seed={seed}"
    if stamp.exists() and stamp.read_text() == settings:
        return root / "data.yaml"
    rng = np.random.default_rng(seed)
    for split, count in (("train", train), ("val", val)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            image, lines = _scene(rng, size, Image, ImageDraw)
            image.save(root / "images" / split / f"{i:05d}.png")
            (root / "labels" / split / f"{i:05d}.txt").write_text("".join(line + "\n" for line in lines))
    names = "".join(f"  {k}: {name}\n" for k, name in enumerate(CLASSES))
    (root / "data.yaml").write_text(f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n{names}")
    stamp.write_text(settings)
    return root / "data.yaml"


def _scene(rng: np.random.Generator, size: int, Image, ImageDraw):
    """One image: a noisy gradient background and 1-4 shapes in colours that stand out from it, with labels."""
    ramp = np.linspace(0, 1, size)[None, :, None]
    low, high = rng.integers(0, 120, 3), rng.integers(60, 180, 3)
    background = low + (high - low) * (ramp if rng.random() < 0.5 else ramp.transpose(1, 0, 2))
    background = background + rng.normal(0, 10, (size, size, 3))
    image = Image.fromarray(np.clip(background, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    lines = []
    for _ in range(int(rng.integers(1, 5))):
        kind = int(rng.integers(len(CLASSES)))
        w, h = (int(v) for v in rng.integers(size // 6, int(size / 2.5), 2))
        x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        local = background[y0:y0 + h, x0:x0 + w].mean()
        if abs(sum(colour) / 3 - local) < 70:  # a shape that stands out: brighter or darker than where it lies
            colour = tuple(min(255, c + 120) for c in colour) if local < 128 else tuple(max(0, c - 120) for c in colour)
        box = (x0, y0, x0 + w, y0 + h)
        if kind == 0:
            draw.rectangle(box, fill=colour)
        elif kind == 1:
            draw.ellipse(box, fill=colour)
        elif kind == 2:
            draw.polygon([(x0 + w / 2, y0), (x0, y0 + h), (x0 + w, y0 + h)], fill=colour)
        else:
            t = max(2, min(w, h) // 4)
            draw.rectangle((x0 + w / 2 - t / 2, y0, x0 + w / 2 + t / 2, y0 + h), fill=colour)
            draw.rectangle((x0, y0 + h / 2 - t / 2, x0 + w, y0 + h / 2 + t / 2), fill=colour)
        lines.append(f"{kind} {(x0 + w / 2) / size:.6f} {(y0 + h / 2) / size:.6f} {w / size:.6f} {h / size:.6f}")
    return image, lines
