"""Streaming image files (netslim.data.stream): the random-resized-crop box, decoding batch by batch in a
background thread and worker processes, the order and determinism of Loader, and the GPU path's routing
with a stand-in for nvJPEG (the real call needs CUDA and torchvision)."""

import io

import numpy as np
import pytest
import torch

from netslim.data import ImageFiles, Loader, StreamLoader, jpeg, list_image_folder, make_loaders, stream
from netslim.pipeline import ExperimentConfig, build_model_for
from netslim.train import TrainConfig
from netslim.train import train as train_model

Image = pytest.importorskip("PIL.Image")


def _ramp(w, h):
    """R encodes x, G encodes y (0..255 across the image): a crop's content tells where it was taken."""
    x = np.linspace(0, 255, w)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, np.full_like(x, 60)], -1).round().astype(np.uint8))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """train/<class>/ with 3 classes of JPEGs of different sizes, plus a PNG and a grayscale JPEG."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    for c, name in enumerate(("n01", "n02", "n03")):
        for split, count in (("train", 14), ("val", 4)):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(count):
                w, h = 60 + 7 * i, 48 + 5 * ((i + c) % 4)
                img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) if i % 3 else _ramp(w, h)
                img.save(d / f"{i}.JPEG", quality=90)
    Image.new("L", (50, 40), 90).save(root / "train" / "n01" / "gray.JPEG")
    _ramp(64, 64).save(root / "train" / "n02" / "ramp.png")
    return root


def test_crop_box_is_inside_and_follows_its_draws():
    rng = np.random.default_rng(1)
    for _ in range(500):
        w, h = int(rng.integers(1, 400)), int(rng.integers(1, 400))
        left, top, bw, bh = stream.crop_box(w, h, rng.random(4))
        assert 0 <= left and 0 <= top and 1 <= bw and 1 <= bh and left + bw <= w and top + bh <= h
    assert stream.crop_box(300, 200, [1 - 1e-12, 0.5, 0.0, 0.0])[2:] == (200, 200)  # a square too big: shrunk to fit
    left, top, bw, bh = stream.crop_box(1000, 1000, [0.0, 0.5, 0.5, 0.5])  # 8% of the area, square, centered
    assert abs(bw * bh / 1e6 - 0.08) < 0.002 and bw == bh and abs(left + bw / 2 - 500) <= 1
    wide = stream.crop_box(1000, 1000, [0.5, 1 - 1e-12, 0, 0])
    assert abs(wide[2] / wide[3] - 4 / 3) < 0.01  # the widest aspect allowed
    assert stream.crop_box(100, 100, [0.3, 0.2, 0.9, 0.1]) == stream.crop_box(100, 100, [0.3, 0.2, 0.9, 0.1])


def test_decode_crop_takes_the_box_it_says(tmp_path):
    path = tmp_path / "ramp.png"  # lossless: pixel values are exact
    _ramp(200, 100).save(path)
    draw = [0.2, 0.6, 0.3, 0.7]
    left, top, w, h = stream.crop_box(200, 100, draw)
    out = stream.decode_crop(path, draw, 32).astype(float)
    assert out.shape == (3, 32, 32)
    # R at the left and right edges of the crop matches x at the box's edges (within resampling)
    assert abs(out[0, :, 0].mean() - 255 * (left + 0.5 * w / 32) / 199) < 6
    assert abs(out[0, :, -1].mean() - 255 * (left + w - 0.5 * w / 32) / 199) < 6
    assert abs(out[1, 0, :].mean() - 255 * (top + 0.5 * h / 32) / 99) < 6
    with pytest.raises(jpeg.DatasetError, match="bad.jpg: unreadable"):
        bad = tmp_path / "bad.jpg"
        bad.write_bytes(b"\xff\xd8\xffnot really")
        stream.decode_crop(bad, draw, 32)


def _ids(loader):
    """(labels, images) of one epoch."""
    batches = list(loader)
    return torch.cat([y for _, y in batches]), torch.cat([x for x, _ in batches])


def test_an_epoch_covers_every_file_once_in_the_loader_order(folder):
    files = list_image_folder(folder, "train")
    files.image_size = 24
    with StreamLoader(files, 8, train=True, seed=3, workers=1) as loader:
        assert len(loader) == -(-len(files) // 8) and loader.sample_shape == (3, 24, 24)
        loader.set_epoch(1)
        labels, images = _ids(loader)
        assert images.shape == (len(files), 3, 24, 24) and images.dtype == torch.float32
        assert torch.equal(labels, files.labels[loader.indices()])  # the same order as Loader
    twin = Loader(_as_dataset(files), 8, train=True, seed=3)
    twin.set_epoch(1)
    assert torch.equal(loader.indices(), twin.indices())


def _as_dataset(files: ImageFiles):
    from netslim.data import Dataset

    return Dataset(torch.zeros(len(files), 3, 2, 2, dtype=torch.uint8), files.labels, files.num_classes, files.mean,
                   files.std, "twin")


def test_batches_do_not_depend_on_workers_and_repeat_per_epoch(folder):
    files = list_image_folder(folder, "train")
    with StreamLoader(files, 8, seed=0, image_size=20, workers=1, prefetch=1) as one, \
            StreamLoader(files, 8, seed=0, image_size=20, workers=2, prefetch=3) as two:
        one.set_epoch(2)
        two.set_epoch(2)
        a, b = _ids(one), _ids(two)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
        again = _ids(one)
        assert torch.equal(again[1], a[1])  # the same epoch again: the same crops and flips
        one.set_epoch(3)
        assert not torch.equal(_ids(one)[1], a[1])  # another epoch: other crops


def test_evaluation_is_the_resized_center_crop(folder):
    files = list_image_folder(folder, "val")
    with StreamLoader(files, 5, train=False, image_size=16, workers=1) as loader:
        labels, images = _ids(loader)
        assert torch.equal(labels, files.labels)  # in file order
        expected = torch.stack([torch.from_numpy(jpeg.decode_one(p, loader.resize_size, 16)) for p in files.files])
        restored = images * loader.std.view(1, -1, 1, 1) + loader.mean.view(1, -1, 1, 1)
        assert (restored * 255 - expected.float()).abs().max() < 1e-3
        assert loader.resize_size == round(16 * 256 / 224)


def test_an_unreadable_file_is_named(folder, tmp_path):
    files = list_image_folder(folder, "val")
    broken = tmp_path / "broken.JPEG"
    broken.write_bytes(files.files[0].read_bytes()[:100])
    bad = ImageFiles(files.files[:3] + [broken], files.labels[:4], files.num_classes, image_size=16)
    with StreamLoader(bad, 4, train=True, workers=1) as loader, \
            pytest.raises(jpeg.DatasetError, match="broken.JPEG: unreadable"):
        list(loader)


def test_gpu_training_path_with_a_stand_in_decoder(folder, monkeypatch):
    """The nvJPEG path's routing and its batched crop + resize, run on the CPU with PIL standing in for
    torchvision's decode_jpeg: the crops agree with the CPU decoder's up to resampling."""
    def fake_decode_jpeg(data, mode=None, device=None):
        if isinstance(data, list):
            return [fake_decode_jpeg(d) for d in data]
        img = Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB")
        return torch.from_numpy(np.array(img).transpose(2, 0, 1).copy())

    class Mode:
        RGB = "rgb"

    monkeypatch.setattr(jpeg, "_torchvision_decoder", lambda: (fake_decode_jpeg, Mode))
    files = list_image_folder(folder, "train")
    with StreamLoader(files, 8, image_size=24, workers=1) as loader:
        draws = torch.rand(len(files), 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        gpu = loader._decode_gpu(files.files, draws)
        cpu = loader._decode_cpu(files.files, draws)
    assert gpu.shape == cpu.shape == (len(files), 3, 24, 24) and gpu.dtype == torch.uint8
    ramps = [k for k, p in enumerate(files.files) if p.stem in ("0", "3", "6", "9", "12", "ramp")]
    assert (gpu[ramps].float() - cpu[ramps].float()).abs().mean() < 4  # smooth images: nearly equal
    png = next(k for k, p in enumerate(files.files) if p.suffix == ".png")
    assert torch.equal(gpu[png], cpu[png])  # not a JPEG: decoded by PIL on either path


def test_bad_arguments(folder):
    files = list_image_folder(folder, "val")
    with pytest.raises(ValueError, match="workers and prefetch"):
        StreamLoader(files, 4, workers=0)
    with pytest.raises(ValueError, match="image_size <= resize_size"):
        StreamLoader(files, 4, image_size=32, resize_size=16)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="needs a CUDA device and torchvision"):
            StreamLoader(files, 4, gpu_decode=True)


def test_the_pipeline_streams_imagenet(folder):
    config = ExperimentConfig(model="vgg11", dataset="imagenet", data_dir=str(folder), image_size=32, val_size=6,
                              model_kwargs={"widths": [8] * 8})
    train, val, test, train_set = make_loaders(config, 16, torch.device("cpu"), seed=0)
    assert all(isinstance(x, StreamLoader) for x in (train, val, test))
    assert len(train_set) == 3 * 14 + 2 - 6 and len(val.dataset) == 6 and len(test.dataset) == 12
    x, y = next(iter(train))
    assert x.shape == (16, 3, 32, 32) and y.max() < 3
    model, _ = build_model_for(config, train_set)  # sized by the stream: 3 classes, 32x32
    result = train_model(model, train, TrainConfig(epochs=2, lr=0.01, progress=False), val_loader=val,
                         test_loader=test)
    assert len(result["history"]) == 2 and 0 <= result["final"]["test_accuracy"] <= 1
    with pytest.raises(ValueError, match="stream: true applies to image-file datasets"):
        make_loaders(ExperimentConfig(dataset="digits", stream=True), 16, torch.device("cpu"), seed=0)
    for loader in (train, val, test):
        loader.close()
