"""Data sources of the demo: the idx reader, the Fashion-MNIST source order, the shipped subset, image folders."""

import gzip
import os
import struct

import numpy as np
import pytest

from keras_bft.demo import data


def write_idx(path, array, type_code=0x08):
    """An idx file written from the format's definition (independent of read_idx)."""
    dtype = {0x08: ">u1", 0x0C: ">i4", 0x0D: ">f4"}[type_code]
    payload = struct.pack(">BBBB", 0, 0, type_code, array.ndim)
    payload += b"".join(struct.pack(">I", d) for d in array.shape)
    payload += np.asarray(array, dtype=dtype).tobytes()
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(payload)


def write_fake_fashion_mnist(folder, n_train=30, n_test=20, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }
    os.makedirs(folder, exist_ok=True)
    for key, stem in data.IDX_FILES.items():
        write_idx(os.path.join(folder, stem + (".gz" if gz else "")), arrays[key])
    return arrays


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_read_idx_uint8_images(tmp_path, suffix):
    images = np.random.default_rng(1).integers(0, 256, (3, 5, 7), dtype=np.uint8)
    path = tmp_path / ("images-idx3-ubyte" + suffix)
    write_idx(path, images)
    got = data.read_idx(str(path))
    assert got.dtype == np.uint8 and got.shape == (3, 5, 7)
    np.testing.assert_array_equal(got, images)


def test_read_idx_big_endian_types(tmp_path):
    ints = np.array([[1, -2, 70000], [3, 4, -5]], dtype=np.int32)
    write_idx(tmp_path / "i.idx", ints, 0x0C)
    got = data.read_idx(str(tmp_path / "i.idx"))
    np.testing.assert_array_equal(got, ints)
    floats = np.array([0.5, -1.25, 3e5], dtype=np.float32)
    write_idx(tmp_path / "f.idx", floats, 0x0D)
    np.testing.assert_array_equal(data.read_idx(str(tmp_path / "f.idx")), floats)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(str(bad))
    short = tmp_path / "short"
    short.write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 10) + b"\x00" * 9)
    with pytest.raises(ValueError, match="10 bytes|should hold"):
        data.read_idx(str(short))


def test_load_idx_dir_gz_and_raw(tmp_path):
    for gz in (True, False):
        folder = tmp_path / ("gz" if gz else "raw")
        arrays = write_fake_fashion_mnist(str(folder), gz=gz)
        ds = data.load_idx_dir(str(folder))
        assert ds.x_train.shape == (30, 28, 28, 1) and ds.x_test.shape == (20, 28, 28, 1)
        np.testing.assert_array_equal(ds.x_train[..., 0], arrays["x_train"])
        np.testing.assert_array_equal(ds.y_test, arrays["y_test"])
        assert ds.y_train.dtype == np.int32 and ds.class_names == data.FASHION_MNIST_CLASSES


def test_load_idx_dir_missing_file(tmp_path):
    write_fake_fashion_mnist(str(tmp_path))
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte"):
        data.load_idx_dir(str(tmp_path))


def test_source_order(tmp_path, monkeypatch, capsys):
    user, debian = str(tmp_path / "user"), str(tmp_path / "debian")
    write_fake_fashion_mnist(user, n_train=10, seed=1)
    write_fake_fashion_mnist(debian, n_train=20, seed=2)
    missing = str(tmp_path / "missing")

    def keras_ok():
        return data.Dataset(np.zeros((5, 28, 28, 1), np.uint8), np.zeros(5, np.int32),
                            np.zeros((5, 28, 28, 1), np.uint8), np.zeros(5, np.int32),
                            data.FASHION_MNIST_CLASSES, "keras", "mock")

    def keras_offline():
        raise Exception("URL fetch failure: offline")

    # 1. --data-dir wins over everything.
    ds = data.load_fashion_mnist(user, debian_dir=debian)
    assert ds.source == "data_dir" and len(ds.x_train) == 10
    assert "--data-dir" in capsys.readouterr().out
    # 2. then Debian's package.
    monkeypatch.setattr(data, "_load_keras", keras_ok)
    ds = data.load_fashion_mnist(None, debian_dir=debian)
    assert ds.source == "debian" and len(ds.x_train) == 20
    assert "dataset-fashion-mnist" in capsys.readouterr().out
    # 3. then the Keras download.
    ds = data.load_fashion_mnist(None, debian_dir=missing)
    assert ds.source == "keras"
    # 4. a failed download (offline) falls back to the shipped subset, and says why.
    monkeypatch.setattr(data, "_load_keras", keras_offline)
    ds = data.load_fashion_mnist(None, debian_dir=missing)
    assert ds.source == "subset"
    out = capsys.readouterr().out
    assert "shipped with keras-bft" in out and "offline" in out
    assert data.load_fashion_mnist(None, debian_dir=missing, download=False, verbose=False).source == "subset"
    # A --data-dir that is not a folder is an error, not a silent fallback.
    with pytest.raises(ValueError, match="data_dir"):
        data.load_fashion_mnist(missing, debian_dir=debian)


def test_shipped_subset_is_stratified_real_images():
    ds = data.load_subset()
    assert ds.source == "subset" and os.path.getsize(data.SUBSET_PATH) < 4_000_000
    assert ds.x_train.shape == (4000, 28, 28, 1) and ds.x_test.shape == (1000, 28, 28, 1)
    np.testing.assert_array_equal(np.bincount(ds.y_train, minlength=10), [400] * 10)
    np.testing.assert_array_equal(np.bincount(ds.y_test, minlength=10), [100] * 10)
    # Real Fashion-MNIST: black corners, bright centres, no two identical images, class means differ.
    assert ds.x_train[:, 0, 0].mean() < 1 and ds.x_train[:, 10:18, 10:18].mean() > 100
    assert len(np.unique(ds.x_train.reshape(4000, -1), axis=0)) == 4000
    means = np.stack([ds.x_train[ds.y_train == c].mean(0) for c in range(10)])
    assert np.abs(means[1] - means[8]).mean() > 20  # trousers vs bags


def test_stratified_indices():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    idx = data.stratified_indices(labels, 5, seed=3)
    np.testing.assert_array_equal(np.bincount(labels[idx]), [5, 3, 5])
    assert len(np.unique(idx)) == len(idx) and np.all(np.diff(idx) > 0)
    with pytest.raises(ValueError, match="per_class"):
        data.stratified_indices(labels, 0)


def test_prepare_images_pads_crops_and_repeats():
    x = np.full((2, 28, 28, 1), 255, np.uint8)
    y = data.prepare_images(x, 32)
    assert y.shape == (2, 32, 32, 1) and y.dtype == np.float32
    assert y[:, 2:30, 2:30].min() == 1.0 and y[:, :2].max() == 0 and y[:, :, 30:].max() == 0
    assert data.prepare_images(x, 32, channels=3).shape == (2, 32, 32, 3)
    big = np.arange(40 * 40, dtype=np.uint8).reshape(1, 40, 40, 1)
    np.testing.assert_array_equal(data.prepare_images(big, 32)[0, :, :, 0] * 255, big[0, 4:36, 4:36, 0])
    with pytest.raises(ValueError, match="shape"):
        data.prepare_images(np.zeros((2, 3)), 32)


def _write_image_folder(root, classes=("cats", "dogs"), per_class=5):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(classes):
        os.makedirs(os.path.join(root, name))
        for i in range(per_class):
            pixels = np.clip(rng.normal(60 + 120 * c, 20, (40, 48, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(os.path.join(root, name, f"{i}.png"))


def test_image_folder(tmp_path):
    root = str(tmp_path / "photos")
    _write_image_folder(root)
    ds = data.load_data(root, image_size=(16, 16), verbose=False)
    assert ds.source == "folder" and ds.class_names == ("cats", "dogs")
    assert len(ds.x_train) + len(ds.x_test) == 10 and len(ds.x_test) == 2
    assert ds.x_train.shape[1:] == (16, 16, 1) and ds.x_train.dtype == np.uint8
    # Labels follow the folders: dogs were drawn brighter.
    x = np.concatenate([ds.x_train, ds.x_test]).reshape(10, -1).mean(1)
    y = np.concatenate([ds.y_train, ds.y_test])
    assert x[y == 1].min() > x[y == 0].max()
    rgb = data.load_image_folder(root, image_size=(8, 8), color_mode="rgb", verbose=False)
    assert rgb.x_train.shape[1:] == (8, 8, 3)


def test_load_data_rejects_unknown_folder(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(ValueError, match="data_dir"):
        data.load_data(str(tmp_path))


def test_read_idx_names_a_gz_that_is_not_gzip(tmp_path):
    fake = tmp_path / "train-images-idx3-ubyte.gz"
    fake.write_bytes(b"plain text, not gzip")
    with pytest.raises(ValueError, match=r"not a valid gzip file.*train-images-idx3-ubyte.gz"):
        data.read_idx(str(fake))
    truncated = tmp_path / "t.gz"
    truncated.write_bytes(gzip.compress(b"\x00\x00\x08\x01" + b"\x00" * 100)[:20])
    with pytest.raises(ValueError, match=r"not a valid gzip file.*t.gz"):
        data.read_idx(str(truncated))


def test_image_folder_with_one_image_per_class_says_so(tmp_path):
    root = str(tmp_path / "photos")
    _write_image_folder(root, per_class=1)
    with pytest.raises(ValueError, match=r"at least 2 images.*\{'cats': 1, 'dogs': 1\}"):
        data.load_data(root, verbose=False)


def test_image_folder_with_a_single_class_is_refused(tmp_path):
    root = str(tmp_path / "photos")
    _write_image_folder(root, classes=("cats",))
    with pytest.raises(ValueError, match=r"at least 2 class sub-folders.*found 1 \('cats': 5\)"):
        data.load_data(root, verbose=False)


def test_image_folder_names_the_corrupt_image(tmp_path):
    root = str(tmp_path / "photos")
    _write_image_folder(root)
    (tmp_path / "photos" / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"1 image file\(s\) cannot be decoded: '.*dogs/broken.png'"):
        data.load_data(root, verbose=False)


def test_idx_data_with_one_class_or_bad_labels_is_refused(tmp_path):
    folder = str(tmp_path / "idx")
    arrays = write_fake_fashion_mnist(folder)
    write_idx(os.path.join(folder, "train-labels-idx1-ubyte.gz"), np.zeros(len(arrays["y_train"]), np.uint8))
    with pytest.raises(ValueError, match=r"only 1 class \(\['T-shirt/top'\]\)"):
        data.load_data(folder, verbose=False)
    labels = arrays["y_test"].copy()
    labels[0] = 12
    write_fake_fashion_mnist(folder)
    write_idx(os.path.join(folder, "t10k-labels-idx1-ubyte.gz"), labels)
    with pytest.raises(ValueError, match=r"test labels must lie in \[0, 10\).*0 to 12"):
        data.load_data(folder, verbose=False)
