"""netslim.data: loaders read the real on-disk formats, reject damaged files, augment and batch correctly."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

import netslim.data as nd
from netslim.data import cifar, mnist, svhn
from netslim.data.base import Dataset, DatasetError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never look in (or download to) the real ~/.cache/netslim; never reach the network."""
    monkeypatch.setenv("NETSLIM_CACHE", str(tmp_path / "cache"))

    def no_network(url, *args, **kwargs):
        raise AssertionError(f"test tried to open {url}")

    monkeypatch.setattr("urllib.request.urlopen", no_network)


def _allow_file_urls(monkeypatch):
    """Re-enable urlopen for file:// URLs only (downloads tested against local files)."""
    import urllib.request

    def file_only(url, *args, **kwargs):
        assert str(url).startswith("file://"), url
        return urllib.request.build_opener().open(url, *args, **kwargs)

    monkeypatch.setattr("urllib.request.urlopen", file_only)


# ---------------------------------------------------------------- writers of the real formats


def _cifar_batch(n: int, label_key: bytes, num_classes: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"testing batch", b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key: [int(v) for v in rng.integers(0, num_classes, n)],
            b"filenames": [f"img{i}.png".encode() for i in range(n)]}


def _write_pickle(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(obj, protocol=2))  # the official batches are protocol-2 pickles


def _write_cifar10(root: Path, n: int = 6) -> dict[str, dict]:
    folder = root / "cifar-10-batches-py"
    batches = {f"data_batch_{i}": _cifar_batch(n, b"labels", 10, i) for i in range(1, 6)}
    batches["test_batch"] = _cifar_batch(n, b"labels", 10, 99)
    for name, batch in batches.items():
        _write_pickle(folder / name, batch)
    _write_pickle(folder / "batches.meta", {b"label_names": [f"c{i}".encode() for i in range(10)]})
    return batches


def _idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx_split(folder: Path, prefix: str, n: int, gz: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for stem, array in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = _idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return images, labels


# ---------------------------------------------------------------- CIFAR


def test_cifar10_loads_official_pickles(tmp_path):
    batches = _write_cifar10(tmp_path)
    train = nd.load_dataset("cifar10", tmp_path, "train", download=False)
    assert train.images.shape == (30, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.dtype == torch.int64 and train.num_classes == 10 and len(train.mean) == 3
    first = batches["data_batch_1"]
    # row = 1024 red, 1024 green, 1024 blue values, each row-major 32x32
    assert torch.equal(train.images[0, 1, 2, 3], torch.tensor(first[b"data"][0, 1024 + 2 * 32 + 3]))
    assert train.labels[:6].tolist() == first[b"labels"]
    assert train.labels[24:].tolist() == batches["data_batch_5"][b"labels"]
    assert train.classes == tuple(f"c{i}" for i in range(10))
    test = nd.load_cifar10(tmp_path, "test", download=False)
    assert len(test) == 6 and test.labels.tolist() == batches["test_batch"][b"labels"]


def test_cifar100_fine_labels(tmp_path):
    folder = tmp_path / "cifar-100-python"
    batch = _cifar_batch(7, b"fine_labels", 100, 3)
    batch[b"coarse_labels"] = [0] * 7
    _write_pickle(folder / "train", batch)
    ds = nd.load_cifar100(tmp_path, "train", download=False)
    assert ds.num_classes == 100 and ds.labels.tolist() == batch[b"fine_labels"]
    assert torch.equal(ds.images.reshape(7, -1), torch.from_numpy(batch[b"data"]))


def test_cifar_found_in_named_subfolder_and_cache(tmp_path, monkeypatch):
    _write_cifar10(tmp_path / "data" / "cifar10")
    assert len(nd.load_cifar10(tmp_path / "data", "test", download=False)) == 6
    _write_cifar10(tmp_path / "cache" / "cifar10")
    assert len(nd.load_cifar10(None, "test", download=False)) == 6


def test_cifar_missing_names_folder_and_url(tmp_path):
    with pytest.raises(DatasetError) as e:
        nd.load_cifar10(tmp_path, "train", download=False)
    msg = str(e.value)
    assert "CIFAR-10 not found" in msg and "cifar-10-batches-py/" in msg and str(tmp_path) in msg
    assert "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz" in msg and "\n" not in msg


@pytest.mark.parametrize("damage", ["truncated", "garbage", "wrong_shape", "bad_label", "not_dict"])
def test_cifar_corrupt_batch_rejected(tmp_path, damage):
    batches = _write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:500])
    elif damage == "garbage":
        path.write_bytes(b"this is not a pickle")
    elif damage == "wrong_shape":
        _write_pickle(path, {**batches["data_batch_3"], b"data": np.zeros((6, 3000), np.uint8)})
    elif damage == "bad_label":
        _write_pickle(path, {**batches["data_batch_3"], b"labels": [10] * 6})
    else:
        _write_pickle(path, [1, 2, 3])
    with pytest.raises(DatasetError, match="data_batch_3"):
        nd.load_cifar10(tmp_path, "train", download=False)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_cifar_pickle_with_foreign_global_refused(tmp_path, capsys):
    batches = _write_cifar10(tmp_path)
    _write_pickle(tmp_path / "cifar-10-batches-py" / "test_batch", {**batches["test_batch"], b"x": _Evil()})
    with pytest.raises(DatasetError, match=r"__builtin__\.print is not allowed"):
        nd.load_cifar10(tmp_path, "test", download=False)
    assert "pwned" not in capsys.readouterr().out


def test_cifar_reads_python2_style_numpy_core_globals(tmp_path):
    """The official files name numpy.core.multiarray._reconstruct (numpy 1); it must map to numpy 2."""
    batch = _cifar_batch(4, b"labels", 10, 5)
    raw = pickle.dumps(batch, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in raw
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "test_batch").write_bytes(raw)
    ds = nd.load_cifar10(tmp_path, "test", download=False)
    assert torch.equal(ds.images.reshape(4, -1), torch.from_numpy(batch[b"data"]))


def test_cifar_download_checks_md5_and_extracts(tmp_path, monkeypatch):
    _allow_file_urls(monkeypatch)
    src = tmp_path / "src"
    _write_cifar10(src)
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    good_md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    dest = tmp_path / "dest"

    monkeypatch.setattr(cifar, "CIFAR10", dataclasses.replace(cifar.CIFAR10, url=archive.as_uri()))
    with pytest.raises(DatasetError, match="expected c58f30108f718f92721af3b95e74349a") as e:
        nd.load_cifar10(dest, "test", download=True)  # our archive is not the official file
    assert str(dest) in str(e.value)
    assert not list(dest.glob("*.tar.gz")) and not list(dest.glob("*.part"))

    monkeypatch.setattr(cifar, "CIFAR10", dataclasses.replace(cifar.CIFAR10, url=archive.as_uri(), md5=good_md5))
    ds = nd.load_cifar10(dest, "test", download=True)
    assert len(ds) == 6 and (dest / "cifar-10-batches-py" / "data_batch_5").is_file()
    assert not (dest / "cifar-10-python.tar.gz").exists()


def test_download_without_network_names_url_and_dir(tmp_path, monkeypatch):
    _allow_file_urls(monkeypatch)
    url = (tmp_path / "nowhere" / "cifar-10-python.tar.gz").as_uri()
    monkeypatch.setattr(cifar, "CIFAR10", dataclasses.replace(cifar.CIFAR10, url=url))
    with pytest.raises(DatasetError) as e:
        nd.load_cifar10(tmp_path / "d", "train", download=True)
    msg = str(e.value)
    assert "download of " + url + " failed" in msg and str(tmp_path / "d") in msg


def test_check_md5(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"hello")
    nd.check_md5(path, "5d41402abc4b2a76b9719d911017c592")
    with pytest.raises(DatasetError, match="bad md5"):
        nd.check_md5(path, "0" * 32)


# ---------------------------------------------------------------- SVHN


def test_svhn_mat_label_10_is_zero(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [9], [10], [3]], dtype=np.uint8)
    scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    ds = nd.load_dataset("svhn", tmp_path, "test", download=False)
    assert ds.images.shape == (5, 3, 32, 32) and ds.images.dtype == torch.uint8
    assert ds.labels.tolist() == [0, 1, 9, 0, 3] and ds.labels.dtype == torch.int64
    assert torch.equal(ds.images[2, 1], torch.from_numpy(x[:, :, 1, 2]))  # (H, W, C, N) -> (N, C, H, W)


def test_svhn_errors(tmp_path):
    scipy_io = pytest.importorskip("scipy.io")
    with pytest.raises(DatasetError, match="put extra_32x32.mat in .*extra_32x32.mat"):
        svhn.load_svhn(tmp_path, "extra", download=False)
    (tmp_path / "train_32x32.mat").write_bytes(b"MATLAB 5.0 MAT-file garbage")
    with pytest.raises(DatasetError, match="train_32x32.mat: unreadable .mat"):
        svhn.load_svhn(tmp_path, "train", download=False)
    scipy_io.savemat(tmp_path / "test_32x32.mat", {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1))})
    with pytest.raises(DatasetError, match=r"'X' must be uint8 \(32, 32, 3, N\)"):
        svhn.load_svhn(tmp_path, "test", download=False)
    with pytest.raises(ValueError, match="split"):
        svhn.load_svhn(tmp_path, "valid")


# ---------------------------------------------------------------- MNIST / Fashion-MNIST


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_idx(tmp_path, gz):
    images, labels = _write_idx_split(tmp_path, "t10k", 9, gz)
    ds = nd.load_dataset("mnist", tmp_path, "test", download=False)
    assert ds.images.shape == (9, 1, 28, 28) and ds.images.dtype == torch.uint8
    assert torch.equal(ds.images[:, 0], torch.from_numpy(images))
    assert ds.labels.tolist() == labels.tolist()


def test_parse_idx_header():
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    assert np.array_equal(nd.parse_idx(_idx_bytes(arr)), arr)
    shorts = bytes([0, 0, 0x0B, 1]) + struct.pack(">I", 2) + struct.pack(">2h", -3, 300)
    assert nd.parse_idx(shorts).tolist() == [-3, 300]
    with pytest.raises(DatasetError, match="bad magic"):
        nd.parse_idx(b"\x00\x01\x08\x01" + bytes(8))
    with pytest.raises(DatasetError, match=r"IDX size 39 bytes, expected 40 for shape \(2, 3, 4\)"):
        nd.parse_idx(_idx_bytes(arr)[:-1])


@pytest.mark.parametrize("damage", ["truncated_gz", "short_data", "bad_magic", "count_mismatch", "wrong_kind"])
def test_mnist_corrupt_rejected(tmp_path, damage):
    _write_idx_split(tmp_path, "train", 5, gz=True)
    images_gz, labels_gz = tmp_path / "train-images-idx3-ubyte.gz", tmp_path / "train-labels-idx1-ubyte.gz"
    if damage == "truncated_gz":
        images_gz.write_bytes(images_gz.read_bytes()[:100])
        match = "train-images-idx3-ubyte.gz: unreadable"
    elif damage == "short_data":
        images_gz.write_bytes(gzip.compress(gzip.decompress(images_gz.read_bytes())[:-10]))
        match = "truncated or corrupt"
    elif damage == "bad_magic":
        labels_gz.write_bytes(gzip.compress(b"\x08\x01\x00\x00" + bytes(12)))
        match = "train-labels-idx1-ubyte.gz: not an IDX file"
    elif damage == "count_mismatch":
        labels_gz.write_bytes(gzip.compress(_idx_bytes(np.zeros(4, np.uint8))))
        match = "5 images but train-labels-idx1-ubyte.gz has 4 labels"
    else:
        labels_gz.write_bytes(gzip.compress(_idx_bytes(np.zeros((5, 2), np.uint8))))
        match = "expected uint8 labels"
    with pytest.raises(DatasetError, match=match):
        nd.load_mnist(tmp_path, "train", download=False)


def test_mnist_missing_and_download_md5(tmp_path, monkeypatch):
    with pytest.raises(DatasetError) as e:
        nd.load_mnist(tmp_path, "train", download=False)
    assert "MNIST train not found" in str(e.value) and "train-images-idx3-ubyte[.gz]" in str(e.value)
    assert "https://ossci-datasets.s3.amazonaws.com/mnist/" in str(e.value)

    _allow_file_urls(monkeypatch)
    server = tmp_path / "server"
    images, labels = _write_idx_split(server, "t10k", 3, gz=True)
    md5s = {p.name.removesuffix(".gz"): hashlib.md5(p.read_bytes()).hexdigest() for p in server.iterdir()}
    monkeypatch.setattr(mnist, "MNIST", dataclasses.replace(mnist.MNIST, base_url=server.as_uri() + "/"))
    with pytest.raises(DatasetError, match="expected 9fb629c4189551a2d022fa330f9573f3"):
        nd.load_mnist(None, "test")  # official md5s reject our files; target is the (tmp) cache
    monkeypatch.setattr(mnist, "MNIST", dataclasses.replace(mnist.MNIST, base_url=server.as_uri() + "/", md5=md5s))
    ds = nd.load_mnist(None, "test")
    assert ds.labels.tolist() == labels.tolist()
    assert (tmp_path / "cache" / "mnist" / "t10k-images-idx3-ubyte.gz").is_file()


def test_fashion_mnist_searches_system_dir(tmp_path, monkeypatch):
    system = tmp_path / "usr-share"
    _, labels = _write_idx_split(system, "t10k", 4, gz=True)
    monkeypatch.setattr(mnist, "FASHION_MNIST", dataclasses.replace(mnist.FASHION_MNIST, system_dirs=(str(system),)))
    ds = nd.load_dataset("fashion-mnist", tmp_path / "empty", "test", download=False)
    assert ds.name == "fashion-mnist" and ds.labels.tolist() == labels.tolist() and ds.classes[9] == "Ankle boot"


@pytest.mark.skipif(not FASHION_DIR.is_dir(), reason="Debian's fashion-mnist package is not installed")
def test_real_fashion_mnist_from_debian():
    train = nd.load_fashion_mnist(None, "train", download=False)
    test = nd.load_dataset("fashion-mnist", split="test", download=False)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(train.labels).tolist() == [6000] * 10
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert abs(train.images.float().mean().item() / 255 - train.mean[0]) < 0.01


# ---------------------------------------------------------------- ImageFolder / ImageNet


def _write_image_folder(root: Path, image_mod) -> None:
    colors = {"n01": (255, 0, 0), "n02": (0, 0, 255)}
    for split, count in (("train", 2), ("val", 1)):
        for wnid, color in colors.items():
            d = root / split / wnid
            d.mkdir(parents=True)
            for i in range(count):
                img = image_mod.new("RGB", (60 + 10 * i, 40), color)
                img.putpixel((0, 0), (0, 255, 0))  # a corner pixel the center crop removes
                img.save(d / f"{wnid}_{i}.JPEG" if i % 2 == 0 else d / f"{wnid}_{i}.png",
                         format="JPEG" if i % 2 == 0 else "PNG", quality=95)


def test_imagenet_folder(tmp_path):
    image_mod = pytest.importorskip("PIL.Image")
    _write_image_folder(tmp_path, image_mod)
    train = nd.load_dataset("imagenet", tmp_path, "train", image_size=16, progress=False)
    assert train.images.shape == (4, 3, 16, 16) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 0, 1, 1] and train.classes == ("n01", "n02")
    red = train.images[train.labels == 0].float().mean(dim=(0, 2, 3))
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    test = nd.load_imagenet(tmp_path, "test", image_size=16, progress=False)
    assert test.images.shape == (2, 3, 16, 16) and test.labels.tolist() == [0, 1]
    assert test.images[1, 2].float().min() > 230  # blue, center-cropped


def test_imagenet_errors(tmp_path):
    image_mod = pytest.importorskip("PIL.Image")
    with pytest.raises(DatasetError, match="cannot be downloaded automatically .*train/<wnid>/"):
        nd.load_imagenet(tmp_path, "train")
    (tmp_path / "val").mkdir()
    image_mod.new("RGB", (8, 8)).save(tmp_path / "val" / "x.JPEG")
    with pytest.raises(DatasetError, match="loose images"):
        nd.load_imagenet(tmp_path, "test", progress=False)
    (tmp_path / "train" / "n01").mkdir(parents=True)
    (tmp_path / "train" / "n01" / "broken.JPEG").write_bytes(b"\xff\xd8\xff not a jpeg")
    with pytest.raises(DatasetError, match="broken.JPEG: unreadable image"):
        nd.load_imagenet(tmp_path, "train", progress=False)


# ---------------------------------------------------------------- digits, registry, splits


def test_digits():
    pytest.importorskip("sklearn")
    train, test = nd.load_dataset("digits"), nd.load_digits(split="test")
    assert train.images.shape == (1438, 1, 8, 8) and test.images.shape == (359, 1, 8, 8)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255 and int(train.images.min()) == 0
    assert set(train.labels.tolist()) == set(range(10)) and train.num_classes == 10
    assert torch.equal(nd.load_digits(split="test").images, test.images)  # deterministic split
    both = torch.cat([train.images, test.images]).reshape(len(train) + len(test), -1)
    assert len(torch.unique(both, dim=0)) > 1700  # disjoint split, not the same images twice


def test_registry_unknown_name():
    with pytest.raises(ValueError, match="valid names: cifar10, cifar100, svhn, mnist, fashion-mnist, imagenet"):
        nd.load_dataset("cifar11")
    assert set(nd.DATASETS) == set(nd.DEFAULT_AUGMENT)


def _toy(n: int = 50, num_classes: int = 5) -> Dataset:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 6, 6), dtype=torch.uint8, generator=g)
    return Dataset(images, torch.arange(n) % num_classes, num_classes, (0.5, 0.4, 0.3), (0.2, 0.25, 0.3), "toy")


def test_dataset_validates():
    ds = _toy()
    with pytest.raises(ValueError, match="uint8"):
        Dataset(ds.images.float(), ds.labels, 5, ds.mean, ds.std, "x")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 4\)"):
        Dataset(ds.images, ds.labels, 4, ds.mean, ds.std, "x")
    with pytest.raises(ValueError, match="mean/std need 3"):
        Dataset(ds.images, ds.labels, 5, (0.5,), (0.2,), "x")


def test_validation_split_deterministic_and_disjoint():
    ds = _toy(100)
    ds.images[:, 0, 0, 0] = torch.arange(100, dtype=torch.uint8)  # identify samples
    train, val = nd.validation_split(ds, 30, seed=7)
    train2, val2 = nd.validation_split(ds, 30, seed=7)
    _, val3 = nd.validation_split(ds, 30, seed=8)
    ids = lambda d: d.images[:, 0, 0, 0].tolist()  # noqa: E731
    assert len(train) == 70 and len(val) == 30 and ids(val) == ids(val2) and ids(val) != ids(val3)
    assert sorted(ids(train) + ids(val)) == list(range(100)) and ids(val) == sorted(ids(val))
    assert torch.equal(train.labels, torch.tensor(ids(train)) % 5)


# ---------------------------------------------------------------- augmentation


def test_normalize():
    batch = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1)
    out = nd.normalize(batch, (0.0, 0.2, 0.5), (1.0, 0.5, 0.25))
    assert out.dtype == torch.float32
    assert torch.allclose(out.flatten(), torch.tensor([0.0, 0.0, 2.0]))


def test_random_crop_matches_slow_reference():
    g = torch.Generator().manual_seed(3)
    batch = torch.randint(1, 256, (64, 3, 8, 10), dtype=torch.uint8, generator=g)
    out = nd.random_crop(batch, 4, torch.Generator().manual_seed(5))
    assert out.shape == batch.shape and out.dtype == torch.uint8
    dy, dx = torch.randint(0, 9, (2, 64), generator=torch.Generator().manual_seed(5))  # the same draws
    padded = torch.nn.functional.pad(batch, (4, 4, 4, 4))
    for i in range(64):
        assert torch.equal(out[i], padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 10])
    assert len({(int(a), int(b)) for a, b in zip(dy, dx, strict=True)}) > 20  # offsets vary per sample
    assert (out == 0).any() and not torch.equal(out, batch)


def test_random_flip_matches_torch_flip():
    batch = torch.randint(0, 256, (40, 2, 4, 5), dtype=torch.uint8)
    out = nd.random_flip(batch, 0.5, torch.Generator().manual_seed(2))
    mask = torch.rand(40, generator=torch.Generator().manual_seed(2)) < 0.5
    assert 5 < int(mask.sum()) < 35
    assert torch.equal(out[mask], torch.flip(batch[mask], dims=[3]))
    assert torch.equal(out[~mask], batch[~mask])


# ---------------------------------------------------------------- Loader


def _epoch_ids(loader: nd.Loader) -> list[int]:
    """Recover sample ids from the normalized pixel (0,0,0) (unaugmented) of every batch."""
    ids = []
    for images, labels in loader:
        pixel = images[:, 0, 0, 0] * loader.dataset.std[0] + loader.dataset.mean[0]
        ids += torch.round(pixel * 255).long().tolist()
        assert labels.dtype == torch.int64 and images.dtype == torch.float32
    return ids


def _id_dataset(n: int) -> Dataset:
    ds = _toy(n)
    ds.images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return ds


def test_loader_covers_each_sample_once_and_is_deterministic():
    ds = _id_dataset(50)
    loader = nd.Loader(ds, 16, train=True, augment="none", seed=3)
    assert len(loader) == 4
    loader.set_epoch(0)
    e0 = _epoch_ids(loader)
    assert sorted(e0) == list(range(50)) and e0 != list(range(50))
    loader.set_epoch(1)
    e1 = _epoch_ids(loader)
    assert sorted(e1) == list(range(50)) and e1 != e0
    resumed = nd.Loader(ds, 16, train=True, seed=3)
    resumed.set_epoch(1)
    assert _epoch_ids(resumed) == e1
    other_seed = nd.Loader(ds, 16, train=True, seed=4)
    assert _epoch_ids(other_seed) != e0
    dropped = nd.Loader(ds, 16, train=True, drop_last=True, seed=3)
    assert len(dropped) == 3 and _epoch_ids(dropped) == e0[:48]
    assert _epoch_ids(nd.Loader(ds, 16, train=False)) == list(range(50))


def test_loader_labels_follow_images_and_augmentation_reproducible():
    ds = _id_dataset(40)
    loader = nd.Loader(ds, 8, train=True, augment="cifar", seed=0)
    loader.set_epoch(2)
    a = list(loader)
    b = list(loader)
    assert all(torch.equal(x[0], y[0]) and torch.equal(x[1], y[1]) for x, y in zip(a, b, strict=True))
    order = loader.indices()
    assert torch.equal(torch.cat([lab for _, lab in a]), ds.labels[order])
    plain = nd.Loader(ds, 8, train=True, augment="none", seed=0)
    plain.set_epoch(2)
    assert not all(torch.equal(x[0], y[0]) for x, y in zip(a, plain, strict=True))  # augmentation applied
    normalized = nd.normalize(ds.images[order[:8]], ds.mean, ds.std)
    assert torch.allclose(next(iter(plain))[0], normalized)


@pytest.mark.parametrize("n", [48, 50])
def test_loader_rank_shards(n):
    ds = _id_dataset(n)
    shards = []
    for rank in range(4):
        loader = nd.Loader(ds, 5, train=True, seed=9, rank=rank, world_size=4)
        loader.set_epoch(1)
        shards.append(_epoch_ids(loader))
        assert len(loader) == 3 and loader.num_samples == -(-n // 4)
    assert len({len(s) for s in shards}) == 1  # equal size
    flat = [i for s in shards for i in s]
    assert set(flat) == set(range(n))  # everything covered
    if n == 48:
        assert len(flat) == len(set(flat)) == 48  # disjoint
    else:
        assert len(flat) == 52 and len(set(flat)) == 50  # padded by wrapping two samples


def test_loader_rejects_bad_arguments():
    ds = _toy(10)
    with pytest.raises(ValueError, match="augmentation"):
        nd.Loader(ds, 4, augment="imagenet-heavy")
    with pytest.raises(ValueError, match="rank"):
        nd.Loader(ds, 4, rank=2, world_size=2)


def test_pickle_helper_roundtrip_via_bytesio():
    """safe_unpickle accepts exactly what CIFAR batches contain (numpy arrays, lists, bytes)."""
    buf = io.BytesIO(pickle.dumps({b"a": np.arange(3, dtype=np.int32), b"b": [b"x"]}, protocol=2))
    obj = cifar._NumpyUnpickler(buf, encoding="bytes").load()
    assert obj[b"a"].tolist() == [0, 1, 2] and obj[b"b"] == [b"x"]
