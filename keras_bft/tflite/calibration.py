"""Representative (calibration) data for full-int8 conversion, from arrays, tf.data or an image folder."""

import os

import keras
import numpy as np

_IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


def _image_folder(path, input_shape, num_samples):
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(path)
        for name in names
        if name.lower().endswith(_IMAGE_EXTENSIONS)
    )
    if not files:
        raise ValueError(
            "`representative_data` is a folder without images "
            f"({', '.join(_IMAGE_EXTENSIONS)}). Received: representative_data={path!r}"
        )
    if len(input_shape) != 4:
        raise ValueError(
            "An image folder can only calibrate a model with one 4D image input. "
            f"Received: representative_data={path!r} for input shape {input_shape}"
        )
    height, width, channels = input_shape[1:]
    mode = {1: "grayscale", 3: "rgb", 4: "rgba"}.get(channels)
    if mode is None:
        raise ValueError(
            f"Images cannot fill an input with {channels} channels. "
            f"Received: representative_data={path!r}"
        )
    for name in files[:num_samples]:
        image = keras.utils.load_img(name, color_mode=mode, target_size=(height, width))
        yield keras.utils.img_to_array(image, dtype="float32")


def _load_array_file(path):
    if path.endswith(".npz"):
        with np.load(path) as archive:
            key = "x" if "x" in archive.files else archive.files[0]
            return archive[key]
    return np.load(path)


def _samples(data, input_shapes, num_samples):
    """Yields one sample (a list with one array per model input, no batch axis) at a time."""
    single = len(input_shapes) == 1
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if os.path.isdir(path):
            for image in _image_folder(path, input_shapes[0], num_samples):
                yield [image]
            return
        if path.endswith((".npy", ".npz")) and os.path.isfile(path):
            data = _load_array_file(path)
        else:
            raise ValueError(
                "`representative_data` as a path must be an image folder or a .npy/.npz file. "
                f"Received: representative_data={path!r}"
            )
    try:
        import tensorflow as tf

        is_dataset = isinstance(data, tf.data.Dataset)
    except ImportError:  # pragma: no cover - TensorFlow is a dependency
        is_dataset = False
    if is_dataset:
        count = 0
        for element in data.as_numpy_iterator():
            if isinstance(element, (tuple, list)) and single:
                element = element[0]  # (x, y) pairs: calibrate on x
            parts = [element] if single else list(element)
            parts = [np.asarray(p) for p in parts]
            batched = parts[0].ndim == len(input_shapes[0])
            rows = parts[0].shape[0] if batched else 1
            for i in range(rows):
                if count >= num_samples:
                    return
                yield [p[i] if batched else p for p in parts]
                count += 1
        return
    arrays = [np.asarray(data)] if single else [np.asarray(d) for d in data]
    if len(arrays) != len(input_shapes):
        raise ValueError(
            f"`representative_data` must hold one array per model input ({len(input_shapes)}). "
            f"Received: {len(arrays)} arrays"
        )
    for array, shape in zip(arrays, input_shapes):
        if array.ndim not in (len(shape), len(shape) - 1):
            raise ValueError(
                "`representative_data` arrays must have the model input's rank "
                f"({len(shape)}, batch first) or one less. Received: shape={array.shape}"
            )
    arrays = [a if a.ndim == len(s) else a[None] for a, s in zip(arrays, input_shapes)]
    for i in range(min(num_samples, arrays[0].shape[0])):
        yield [a[i] for a in arrays]


def representative_dataset(data, input_shapes, input_dtypes, num_samples=100, preprocess=None):
    """A `TFLiteConverter.representative_dataset` callable over `data`.

    Args:
        data: a NumPy array (samples first; a list of arrays for several
            inputs), a `tf.data.Dataset` (of samples, batches or `(x, y)`
            pairs), a folder of images (searched recursively, resized to the
            input size, pixel values 0-255 unless `preprocess` says otherwise),
            a `.npy`/`.npz` file, or a callable that already yields lists of
            arrays with a batch axis.
        input_shapes: the static model input shapes, batch included.
        input_dtypes: the model input dtypes.
        num_samples: at most this many samples are used.
        preprocess: optional function applied to each sample array (e.g. the
            model family's `preprocess_input`).

    Returns:
        A callable returning a generator of `[array, ...]`, each with batch 1.
    """
    if callable(data) and not hasattr(data, "as_numpy_iterator"):
        return data
    if not isinstance(num_samples, int) or num_samples < 1:
        raise ValueError(
            f"`num_samples` must be a positive integer. Received: num_samples={num_samples!r}"
        )

    def generate():
        produced = 0
        for sample in _samples(data, input_shapes, num_samples):
            arrays = []
            for array, shape, dtype in zip(sample, input_shapes, input_dtypes):
                array = np.asarray(array, dtype=dtype)
                if preprocess is not None:
                    array = np.asarray(preprocess(array), dtype=dtype)
                if tuple(array.shape) != tuple(shape[1:]):
                    raise ValueError(
                        f"A representative sample has shape {array.shape}; the model input "
                        f"needs {tuple(shape[1:])} (without batch)."
                    )
                arrays.append(array[None])
            produced += 1
            yield arrays
        if produced == 0:
            raise ValueError("`representative_data` yielded no samples.")

    return generate
