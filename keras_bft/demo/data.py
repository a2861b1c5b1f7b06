"""Data for the demo and the examples: Fashion-MNIST from wherever it is, or a folder of images.

Fashion-MNIST (Xiao et al. 2017, MIT licence) is looked up in this order:

1. `data_dir`, a folder holding the four idx files (gzipped or not);
2. Debian's `dataset-fashion-mnist` package (`/usr/share/datasets/fashion-mnist`);
3. `keras.datasets.fashion_mnist` (downloads; works only online);
4. the small stratified subset shipped in `keras_bft/data/`, so the demo
   always runs.

The idx format is four header fields and raw bytes, read here with NumPy only.
"""

import collections
import gzip
import os
import zlib

import keras
import numpy as np

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
DEBIAN_DIR = "/usr/share/datasets/fashion-mnist"
SUBSET_PATH = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "fashion_mnist_subset.npz"
)
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte",
    "y_train": "train-labels-idx1-ubyte",
    "x_test": "t10k-images-idx3-ubyte",
    "y_test": "t10k-labels-idx1-ubyte",
}
SOURCES = ("data_dir", "debian", "keras", "subset")

# idx type codes (third header byte) -> NumPy dtypes; multi-byte types are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

Dataset = collections.namedtuple(
    "Dataset", ["x_train", "y_train", "x_test", "y_test", "class_names", "source", "location"]
)
Dataset.__doc__ = """Images (N, H, W, C) uint8 and labels (N,) int32, with where they came from.

`source` is one of `SOURCES` ("folder" for `load_image_folder`), `location` a
path or URL a person can check.
"""


def read_idx(path):
    """Reads one idx file (`.gz` or raw) into a NumPy array.

    Args:
        path: path of the file.

    Returns:
        An array with the file's dtype and shape.

    Example:

    >>> labels = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")  # doctest: +SKIP
    >>> labels.shape  # doctest: +SKIP
    (10000,)
    """
    gz = str(path).endswith(".gz")
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError
        what = "not a valid gzip file" if gz else "unreadable"
        raise ValueError(f"idx file is {what} ({type(e).__name__}: {e}). Received: path={path!r}") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(
            f"Not an idx file (bad magic number {data[:4].hex() or 'empty'}). Received: path={path!r}"
        )
    dtype = _IDX_DTYPES[data[2]]
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(shape)) * dtype.itemsize
    if len(data) != expected:
        raise ValueError(
            f"idx file of shape {shape} and dtype {dtype} should hold {expected} bytes, "
            f"found {len(data)}. Received: path={path!r}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find_idx(directory, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    # Some mirrors name the files with a dot before "idx" (train-images.idx3-ubyte).
    alt = stem.replace("-idx", ".idx")
    for name in (alt + ".gz", alt):
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


def has_idx_files(directory):
    """Whether `directory` holds all four Fashion-MNIST idx files (gzipped or not)."""
    return directory is not None and all(
        _find_idx(directory, stem) is not None for stem in IDX_FILES.values()
    )


def load_idx_dir(directory, source="data_dir"):
    """Loads the four (Fashion-)MNIST idx files of a folder.

    Args:
        directory: folder with `train-images-idx3-ubyte[.gz]`,
            `train-labels-idx1-ubyte[.gz]`, `t10k-images-idx3-ubyte[.gz]` and
            `t10k-labels-idx1-ubyte[.gz]`.
        source: the `source` recorded in the returned `Dataset`.

    Returns:
        A `Dataset` with images of shape (N, 28, 28, 1).
    """
    arrays = {}
    for key, stem in IDX_FILES.items():
        path = _find_idx(directory, stem)
        if path is None:
            raise ValueError(
                f"Folder has no {stem}[.gz] (expected the four Fashion-MNIST idx files: "
                f"{sorted(IDX_FILES.values())}). Received: directory={directory!r}"
            )
        arrays[key] = read_idx(path)
    for split in ("train", "test"):
        x, y = arrays["x_" + split], arrays["y_" + split]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise ValueError(
                f"{split} images {x.shape} and labels {y.shape} do not match. "
                f"Received: directory={directory!r}"
            )
    return _fashion_mnist(arrays, source, os.path.abspath(directory))


def _fashion_mnist(arrays, source, location):
    """A `Dataset` from Fashion-MNIST's (N, 28, 28) uint8 arrays keyed x_train, y_train, x_test, y_test."""
    return Dataset(
        arrays["x_train"][..., None],
        arrays["y_train"].astype(np.int32),
        arrays["x_test"][..., None],
        arrays["y_test"].astype(np.int32),
        FASHION_MNIST_CLASSES,
        source,
        location,
    )


def load_subset(path=SUBSET_PATH):
    """Loads the stratified Fashion-MNIST subset shipped with the package."""
    with np.load(path) as f:
        return _fashion_mnist(f, "subset", path)


def _load_keras():
    (x_train, y_train), (x_test, y_test) = keras.datasets.fashion_mnist.load_data()
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    return _fashion_mnist(arrays, "keras", "keras.datasets.fashion_mnist (~/.keras/datasets/fashion-mnist)")


def load_fashion_mnist(data_dir=None, debian_dir=DEBIAN_DIR, download=True, subset_path=SUBSET_PATH,
                       verbose=True):
    """Loads Fashion-MNIST from the first source that has it.

    Args:
        data_dir: optional folder with the four idx files. When given it must
            hold them (no silent fallback from a path the user named).
        debian_dir: where Debian's `dataset-fashion-mnist` puts the files.
        download: whether to try `keras.datasets.fashion_mnist` (network).
        subset_path: the shipped subset, the last resort.
        verbose: print which source was used.

    Returns:
        A `Dataset` of uint8 images (N, 28, 28, 1) and int32 labels.

    Example:

    >>> ds = load_fashion_mnist(verbose=False)
    >>> ds.x_train.shape[1:], ds.source in SOURCES
    ((28, 28, 1), True)
    """
    notes = []
    if data_dir is not None:
        if not os.path.isdir(data_dir):
            raise ValueError(f"`data_dir` is not a folder. Received: data_dir={data_dir!r}")
        dataset = load_idx_dir(data_dir, source="data_dir")
    elif has_idx_files(debian_dir):
        dataset = load_idx_dir(debian_dir, source="debian")
    else:
        notes.append(f"no idx files in {debian_dir} (apt-get install dataset-fashion-mnist)")
        dataset = None
        if download:
            try:
                dataset = _load_keras()
            except Exception as e:  # Any network or cache failure means: fall back.
                notes.append(f"keras.datasets.fashion_mnist failed ({type(e).__name__}: {e})")
        else:
            notes.append("download not allowed")
        if dataset is None:
            dataset = load_subset(subset_path)
    if verbose:
        print(describe_source(dataset))
        for note in notes:
            print(f"  (skipped: {note})")
    return dataset


def describe_source(dataset):
    """One line saying where the data came from and how much of it there is."""
    names = {
        "data_dir": "idx files from --data-dir",
        "debian": "Debian package dataset-fashion-mnist",
        "keras": "keras.datasets.fashion_mnist download",
        "subset": "the stratified Fashion-MNIST subset shipped with keras-bft",
        "folder": "image folder",
    }
    return (
        f"Data: {names.get(dataset.source, dataset.source)} ({dataset.location}): "
        f"{len(dataset.x_train)} train / {len(dataset.x_test)} test images of "
        f"{'x'.join(str(d) for d in dataset.x_train.shape[1:])}, {len(dataset.class_names)} classes"
    )


def load_image_folder(directory, image_size=(32, 32), color_mode="grayscale", test_fraction=0.2,
                      seed=1337, verbose=True):
    """Loads a folder of images, one sub-folder per class, for training on your own data.

    Uses `keras.utils.image_dataset_from_directory`; the test split is a
    seeded `test_fraction` of the images (its `validation_split`). Needs at
    least 2 classes of at least 2 images each; an image that cannot be
    decoded is an error naming the file.

    Args:
        directory: folder with one sub-folder of images per class.
        image_size: (height, width) images are resized to.
        color_mode: `"grayscale"`, `"rgb"` or `"rgba"`.
        test_fraction: fraction of images held out for testing, in (0, 1).
        seed: seed of the split.
        verbose: print what was loaded.

    Returns:
        A `Dataset` of uint8 images (N, H, W, C) and int32 labels, source "folder".
    """
    if not os.path.isdir(directory):
        raise ValueError(f"`directory` is not a folder. Received: directory={directory!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"`test_fraction` must be in (0, 1). Received: test_fraction={test_fraction!r}")
    options = dict(labels="inferred", label_mode="int", color_mode=color_mode, image_size=tuple(image_size),
                   batch_size=None)
    # Keras' own file listing (no decoding yet): what each class folder holds.
    try:
        listing = keras.utils.image_dataset_from_directory(directory, shuffle=False, verbose=False, **options)
    except ValueError as e:  # Keras: no image files at all
        raise ValueError(f"{e}. Received: directory={directory!r}") from e
    class_names = tuple(listing.class_names)
    counts = {name: 0 for name in class_names}
    for path in listing.file_paths:
        counts[os.path.relpath(path, directory).split(os.sep)[0]] += 1
    found = ", ".join(f"{name!r}: {count}" for name, count in counts.items())
    if len(class_names) < 2:
        raise ValueError(
            f"An image folder needs at least 2 class sub-folders to train a classifier; found "
            f"{len(class_names)} ({found or 'none'}). Received: directory={directory!r}"
        )
    if min(counts.values()) < 2:
        raise ValueError(
            "Every class needs at least 2 images (one to train on, one to test); found images per "
            f"class {{{found}}}. Received: directory={directory!r}"
        )
    try:
        splits = keras.utils.image_dataset_from_directory(
            directory, shuffle=True, seed=seed, validation_split=test_fraction, subset="both",
            verbose=verbose, **options
        )
    except ValueError as e:  # Keras: a split came out empty
        raise ValueError(
            f"Too few images to hold out test_fraction={test_fraction} for testing: found images per "
            f"class {{{found}}} ({e}). Received: directory={directory!r}"
        ) from e
    arrays = []
    for split in splits:
        images, labels = [], []
        try:
            for image, label in split.as_numpy_iterator():
                images.append(np.clip(np.round(image), 0, 255).astype(np.uint8))
                labels.append(label)
        except Exception as e:  # TF raises its own error types from inside the input pipeline
            bad = _undecodable_images(split.file_paths)
            if not bad:
                raise
            shown = ", ".join(repr(p) for p in bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
            raise ValueError(
                f"{len(bad)} image file(s) cannot be decoded: {shown}. Remove or replace them. "
                f"Received: directory={directory!r}"
            ) from e
        if not images:
            raise ValueError(
                f"Too few images to hold out test_fraction={test_fraction} for testing: found images per "
                f"class {{{found}}}. Received: directory={directory!r}"
            )
        arrays += [np.stack(images), np.asarray(labels, np.int32)]
    dataset = Dataset(*arrays, class_names, "folder", os.path.abspath(directory))
    if verbose:
        print(describe_source(dataset))
    return dataset


def _undecodable_images(paths):
    """The files of `paths` TensorFlow's image decoder (the one Keras uses) rejects."""
    import tensorflow as tf

    bad = []
    for path in paths:
        try:
            tf.io.decode_image(tf.io.read_file(path), expand_animations=False)
        except (tf.errors.OpError, ValueError):
            bad.append(path)
    return bad


def check_dataset(dataset):
    """Raises ValueError unless `dataset` can train and score a classifier.

    Checks that train and test hold images, labels lie in
    `[0, len(class_names))`, and the training labels hold at least 2 classes
    (one class trains a constant and scores accuracy 1.0). Returns `dataset`.
    """
    where = f"Received: data from {dataset.location!r}"
    classes = len(dataset.class_names)
    for split, x, y in (("train", dataset.x_train, dataset.y_train), ("test", dataset.x_test, dataset.y_test)):
        if len(x) == 0:
            raise ValueError(f"The {split} split holds no images. {where}")
        if len(y) and (y.min() < 0 or y.max() >= classes):
            raise ValueError(
                f"{split} labels must lie in [0, {classes}) ({classes} class names); found labels from "
                f"{int(y.min())} to {int(y.max())}. {where}"
            )
    present = np.unique(dataset.y_train)
    if len(present) < 2:
        raise ValueError(
            f"The training images hold only {len(present)} class ({[dataset.class_names[int(c)] for c in present]}); "
            f"a classifier needs at least 2. {where}"
        )
    return dataset


def load_data(data_dir=None, image_size=(32, 32), verbose=True, **kwargs):
    """Loads `data_dir` whatever it holds (idx files or class folders), else Fashion-MNIST.

    Args:
        data_dir: a folder of Fashion-MNIST idx files, or of one sub-folder of
            images per class, or None for Fashion-MNIST from the first source
            that has it (see `load_fashion_mnist`).
        image_size: size images of a folder are resized to.
        verbose: print which source was used.
        **kwargs: passed to `load_fashion_mnist`.

    Returns:
        A `Dataset`, checked by `check_dataset`.
    """
    if data_dir is not None and os.path.isdir(data_dir) and not has_idx_files(data_dir):
        if any(os.path.isdir(os.path.join(data_dir, d)) for d in os.listdir(data_dir)):
            return check_dataset(load_image_folder(data_dir, image_size=image_size, verbose=verbose))
        raise ValueError(
            "`data_dir` holds neither the four Fashion-MNIST idx files nor one sub-folder of "
            f"images per class. Received: data_dir={data_dir!r}"
        )
    return check_dataset(load_fashion_mnist(data_dir, verbose=verbose, **kwargs))


def stratified_indices(labels, per_class, seed=0):
    """Indices of `per_class` examples of each label (all of a rarer one), sorted.

    Args:
        labels: (N,) integer labels.
        per_class: how many to keep per label.
        seed: seed of the random choice.

    Returns:
        A sorted int array of indices into `labels`.
    """
    if not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise ValueError(f"`per_class` must be a positive integer. Received: per_class={per_class!r}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), min(per_class, int(np.sum(labels == c))), replace=False)
        for c in np.unique(labels)
    ]
    return np.sort(np.concatenate(chosen))


def subset_per_class(dataset, train_per_class=None, test_per_class=None, seed=0):
    """`(x_train, y_train, x_test, y_test)` of `dataset`, each split cut to `*_per_class` images per label.

    `None` or 0 keeps a split whole; the subsets are `stratified_indices` with
    seeds `seed` (train) and `seed + 1` (test).
    """
    x_train, y_train, x_test, y_test = dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test
    if train_per_class:
        keep = stratified_indices(y_train, train_per_class, seed=seed)
        x_train, y_train = x_train[keep], y_train[keep]
    if test_per_class:
        keep = stratified_indices(y_test, test_per_class, seed=seed + 1)
        x_test, y_test = x_test[keep], y_test[keep]
    return x_train, y_train, x_test, y_test


def prepare_images(images, size=32, channels=None):
    """uint8 images (N, H, W, C) -> float32 in [0, 1], zero-padded (centred) to `size` x `size`.

    Fashion-MNIST's 28x28 becomes 32x32 by a 2-pixel border of background, as
    for MNIST in LeNet-5: no interpolation blur. Larger images are
    centre-cropped. `channels=3` repeats a single channel (for builders that
    want RGB).
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(f"`images` must have shape (N, H, W, C). Received: shape={images.shape}")
    n, h, w, c = images.shape
    pad_h, pad_w = max(size - h, 0), max(size - w, 0)
    if pad_h or pad_w:
        images = np.pad(images, ((0, 0), (pad_h // 2, pad_h - pad_h // 2),
                                 (pad_w // 2, pad_w - pad_w // 2), (0, 0)))
    top, left = (images.shape[1] - size) // 2, (images.shape[2] - size) // 2
    images = images[:, top:top + size, left:left + size]
    if channels is not None and channels != c:
        if c != 1:
            raise ValueError(
                f"Can only repeat a single channel. Received: channels={channels} for images with {c}"
            )
        images = np.repeat(images, channels, axis=-1)
    return images.astype(np.float32) / np.float32(255.0)
