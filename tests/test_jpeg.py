"""Batched image decoding (netslim.data.jpeg): the CPU process-pool path, the batched resize used on the GPU
path, the JPEG header probe, and errors. The nvJPEG decode itself needs CUDA + torchvision: not tested here."""

import io

import numpy as np
import pytest
import torch

from netslim.data import DatasetError, jpeg, load_image_folder

Image = pytest.importorskip("PIL.Image")

RED, BLUE = (255, 0, 0), (0, 0, 255)


def _save(img, path, **kwargs):
    img.save(path, format=kwargs.pop("format", "JPEG"), quality=kwargs.pop("quality", 95), **kwargs)
    return path


def _halves(w, h):
    """Left half red, right half blue."""
    img = Image.new("RGB", (w, h), RED)
    img.paste(Image.new("RGB", (w - w // 2, h), BLUE), (w // 2, 0))
    return img


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("jpegs")
    rng = np.random.default_rng(0)
    paths = [
        _save(Image.new("RGB", (40, 40), (200, 100, 50)), d / "solid.jpg"),
        _save(_halves(96, 48), d / "halves_wide.jpg"),
        _save(_halves(48, 80), d / "halves_tall.jpg"),
        _save(Image.new("L", (33, 57), 128), d / "gray.jpg"),
        _save(Image.new("CMYK", (50, 30), (0, 255, 255, 0)), d / "cmyk.jpg"),  # red in CMYK
        _save(Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)), d / "noise.jpg"),
        _save(Image.new("RGB", (17, 21), (10, 200, 30)), d / "small.png", format="PNG"),
    ]
    paths += [_save(Image.fromarray(rng.integers(0, 256, (30 + k, 40, 3), dtype=np.uint8)), d / f"n{k}.jpg")
              for k in range(40)]  # more than one chunk, so two workers really share the work
    return paths


def test_cpu_shapes_dtype_and_worker_count_invariance(files):
    one = jpeg.decode_jpegs(files, 16, workers=1)
    two = jpeg.decode_jpegs(files, 16, workers=2)
    assert one.shape == (len(files), 3, 16, 16) and one.dtype == torch.uint8 and one.device.type == "cpu"
    assert torch.equal(one, two)
    larger = jpeg.decode_jpegs(files[:3], 24, workers=2, resize_size=32)
    assert larger.shape == (3, 3, 24, 24)


def test_content_colors_and_halves(files):
    out = jpeg.decode_jpegs(files[:5] + [files[6]], 16, workers=1).int()
    solid, wide, tall, gray, cmyk, png = out
    assert (solid - torch.tensor([200, 100, 50]).view(3, 1, 1)).abs().max() <= 6
    for img in (wide, tall):  # the center crop keeps red left of the middle, blue right of it
        left, right = img[:, :, :6].float().mean((1, 2)), img[:, :, -6:].float().mean((1, 2))
        assert left[0] > 230 and left[2] < 25 and right[2] > 230 and right[0] < 25
    assert (gray - 128).abs().max() <= 3 and torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])
    assert cmyk[0].float().mean() > 230 and cmyk[1:].float().mean() < 25  # CMYK converted to RGB red
    assert (png - torch.tensor([10, 200, 30]).view(3, 1, 1)).abs().max() <= 1  # upscaled, lossless


def test_bytes_input_and_device_argument(files):
    datas = [p.read_bytes() for p in files[:4]]
    assert torch.equal(jpeg.decode_jpegs(datas, 16, "cpu", workers=1), jpeg.decode_jpegs(files[:4], 16, workers=1))
    assert jpeg.decode_jpegs([], 8).shape == (0, 3, 8, 8)
    assert not jpeg.gpu_decode_available("cpu")


def test_matches_the_per_image_decoder(files):
    out = jpeg.decode_jpegs(files, 20, workers=2, resize_size=24)
    for k in (0, 3, 6, 12):
        assert np.array_equal(out[k].numpy(), jpeg.decode_one(files[k], 24, 20))


def test_corrupt_and_missing_files_name_the_file(tmp_path, files):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(files[5].read_bytes()[:200])  # truncated JPEG
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"not an image at all")
    for path, workers in ((bad, 1), (bad, 2), (junk, 2)):
        with pytest.raises(ValueError, match=f"{path.name}: unreadable image") as e:
            jpeg.decode_jpegs(list(files[:40]) + [path], 8, workers=workers)
        assert isinstance(e.value, DatasetError)
    with pytest.raises(DatasetError, match=r"<bytes #1>: unreadable"):
        jpeg.decode_jpegs([files[0].read_bytes(), b"\xff\xd8\xff\xe0garbage"], 8, workers=1)
    with pytest.raises(DatasetError, match="missing.jpg"):
        jpeg.decode_jpegs([tmp_path / "missing.jpg"], 8, workers=1)
    with pytest.raises(ValueError, match="resize_size"):
        jpeg.decode_jpegs(files[:1], 16, resize_size=8)
    with pytest.raises(ValueError, match="workers"):
        jpeg.decode_jpegs(files[:1], 16, workers=0)


def test_jpeg_components(files):
    comps = [jpeg.jpeg_components(p.read_bytes()) for p in files[:7]]
    assert comps == [3, 3, 3, 1, 4, 3, 0]  # CMYK and PNG go to the CPU decoder on the GPU path
    progressive = io.BytesIO()
    Image.new("RGB", (20, 20), RED).save(progressive, format="JPEG", progressive=True)
    assert jpeg.jpeg_components(progressive.getvalue()) == 3
    assert jpeg.jpeg_components(b"\xff\xd8\xff") == 0 and jpeg.jpeg_components(b"") == 0


def test_batched_resize_center_crop_matches_pil(files):
    """The GPU path's resize (batched F.interpolate, antialiased) on full-size decodes, here on the CPU,
    agrees with the PIL path up to resampling differences (and PIL's draft-mode decode)."""
    full = [torch.from_numpy(np.array(Image.open(p).convert("RGB")).transpose(2, 0, 1).copy()) for p in files]
    batched = jpeg.resize_center_crop(full, 16, 16)
    assert batched.shape == (len(files), 3, 16, 16) and batched.dtype == torch.uint8
    pil = jpeg.decode_jpegs(files, 16, workers=1)
    smooth = [0, 1, 2, 3, 4, 6]  # flat regions: nearly equal; noise images differ more but stay correlated
    assert (batched[smooth].int() - pil[smooth].int()).abs().float().mean() < 3
    assert (batched.float() - pil.float()).abs().mean() < 40
    same_shape = [f for f in full if f.shape == full[8].shape]  # grouped into one interpolate call
    assert torch.equal(jpeg.resize_center_crop(same_shape[:1], 16, 16)[0], batched[8])
    with pytest.raises(ValueError):
        jpeg.resize_center_crop([], 8, 8)


def test_image_folder_uses_the_pool(tmp_path):
    for c, color in (("a", RED), ("b", BLUE)):
        (tmp_path / "train" / c).mkdir(parents=True)
        for i in range(40):
            _save(_halves(30 + i, 20) if c == "a" else Image.new("RGB", (25, 25 + i), color),
                  tmp_path / "train" / c / f"{i}.jpg")
    one = load_image_folder(tmp_path, image_size=12, progress=False, workers=1)
    two = load_image_folder(tmp_path, image_size=12, progress=False, workers=2)
    assert torch.equal(one.images, two.images) and one.labels.tolist() == [0] * 40 + [1] * 40
    assert one.images.shape == (80, 3, 12, 12) and one.images.device.type == "cpu"
    assert one.images[40:, 2].float().min() > 230


def test_gpu_path_routing_with_a_stand_in_decoder(files, tmp_path, monkeypatch):
    """The GPU path's batching and routing, run on the CPU with a PIL stand-in for torchvision's decode_jpeg
    (the real nvJPEG call is unverified here): CMYK and PNG go to PIL, a batch the decoder rejects is retried
    image by image, and what it still refuses is decoded by PIL or named in the error."""
    calls = []

    def fake_decode_jpeg(data, mode=None, device=None):
        if isinstance(data, list):
            calls.append(len(data))
            return [fake_decode_jpeg(d) for d in data]
        if data.numel() % 7 == 0:
            raise RuntimeError("nvjpeg refused it")
        try:
            img = Image.open(io.BytesIO(data.numpy().tobytes())).convert("RGB")
        except OSError as e:
            raise RuntimeError(f"decode failed: {e}") from e  # torchvision raises RuntimeError
        return torch.from_numpy(np.array(img).transpose(2, 0, 1).copy())

    class Mode:
        RGB = "rgb"

    monkeypatch.setattr(jpeg, "_torchvision_decoder", lambda: (fake_decode_jpeg, Mode))
    monkeypatch.setattr(jpeg, "GPU_BATCH", 16)
    out = jpeg.decode_on_gpu(files, 16, 16, torch.device("cpu"), 2, lambda n: None)
    assert out.shape == (len(files), 3, 16, 16) and out.dtype == torch.uint8
    pil = jpeg.decode_jpegs(files, 16, workers=1)
    for k in (4, 6):  # CMYK and PNG: decoded by PIL, identical to the CPU path
        assert torch.equal(out[k], pil[k])
    assert (out.float() - pil.float()).abs().mean() < 40 and (out[:4].int() - pil[:4].int()).abs().float().mean() < 3
    assert sum(calls) == len(files) - 2 and max(calls) <= 16
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(files[5].read_bytes()[:200])
    with pytest.raises(DatasetError, match="broken.jpg: unreadable"):
        jpeg.decode_on_gpu([files[0], bad], 8, 8, torch.device("cpu"), 1, lambda n: None)
