"""Calibration (representative) data for full-int8 conversion: loaded, preprocessed and checked.

Every check runs before the converter does, so a calibration mistake is
reported as such (naming the argument, or the CLI flag, and what was received)
and never reaches TFLite's calibrator, which crashes on non-finite values and
silently keeps float ops on all-NaN data.
"""

import dataclasses
import os
import sys
import warnings

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
PREPROCESS_CHOICES = ("none", "mobilenet", "scale:A,B")


@dataclasses.dataclass(frozen=True)
class ModelInput:
    """One input of the exported model.

    Attributes:
        name: the input's name (the LiteRT signature's input name).
        shape: its static shape, batch first.
        dtype: its dtype name.
    """

    name: str
    shape: tuple
    dtype: str


@dataclasses.dataclass(frozen=True)
class Calibration:
    """Checked calibration samples, ready for the converter.

    Attributes:
        samples: one `{input name: array with batch axis 1}` per sample.
        source: how the data was received, for messages.
        value_range: `(min, max)` over all samples of the first input.
        argument: the argument (or CLI flag) the data came from.
    """

    samples: tuple
    source: str
    value_range: tuple
    argument: str = "representative_data"

    def __len__(self):
        return len(self.samples)

    def dataset(self):
        """A `TFLiteConverter.representative_dataset`: yields each sample as a dict by input name."""

        def generate():
            yield from (dict(sample) for sample in self.samples)

        return generate


def describe(data):
    """A short description of input `data` for error messages (shapes and types, not the values)."""
    if isinstance(data, (str, os.PathLike)):
        return repr(os.fspath(data))
    if isinstance(data, np.ndarray):
        return f"array of shape {data.shape} and dtype {data.dtype}"
    if isinstance(data, (list, tuple)):
        return f"{type(data).__name__} of {len(data)} items"
    if isinstance(data, dict):
        return f"dict with keys {sorted(data)}"
    text = repr(data)
    return text if len(text) <= 80 else f"{type(data).__name__} object"


def preprocessing(spec, argument="preprocess"):
    """The function for a preprocessing spec.

    Args:
        spec: `None` or `"none"` (no change), `"mobilenet"` (`x / 127.5 - 1`:
            pixels in [0, 255] to [-1, 1]), `"scale:A,B"` (`x * A + B`), or a
            function of one array.
        argument: the argument (or CLI flag) named in errors.

    Returns:
        A function of one array, or None for no preprocessing.
    """
    if spec is None or callable(spec):
        return spec
    if not isinstance(spec, str):
        raise ValueError(
            f"`{argument}` must be one of {PREPROCESS_CHOICES} or a function. "
            f"Received: {argument}={spec!r}"
        )
    text = spec.strip().lower()
    if text == "none":
        return None
    if text == "mobilenet":
        return _Scale(1.0 / 127.5, -1.0)
    if text.startswith("scale:"):
        parts = text[len("scale:"):].split(",")
        try:
            scale, offset = (float(p) for p in parts)
        except ValueError:
            scale = offset = None
        if scale is not None and np.isfinite(scale) and np.isfinite(offset) and scale != 0:
            return _Scale(scale, offset)
    raise ValueError(
        f"`{argument}` must be one of {PREPROCESS_CHOICES} (A, B finite numbers, A nonzero) or a "
        f"function. Received: {argument}={spec!r}"
    )


@dataclasses.dataclass(frozen=True)
class _Scale:
    scale: float
    offset: float

    def __call__(self, array):
        with np.errstate(over="ignore"):  # an overflow to inf is reported as a non-finite sample
            return np.asarray(array, dtype=np.float32) * np.float32(self.scale) + np.float32(self.offset)


def is_image_folder(data):
    return isinstance(data, (str, os.PathLike)) and os.path.isdir(os.fspath(data))


def expected_input_range(model):
    """The value range the model's (single) input expects, when the model says so.

    A model whose first layer is `keras.layers.Rescaling` takes pixels in
    [0, 255] (MobileNetV3 builders with `include_preprocessing=True`, as in
    keras.applications); a model built with keras_bft's fusion layers and no
    such layer takes [-1, 1] (the MobileNetV1/V2/ShuffleNetV2 builders, see
    docs/applications.md). Otherwise the range is unknown: None.
    """
    import keras

    try:
        if len(model.inputs) != 1:
            return None
    except (AttributeError, ValueError):  # subclassed, never called
        return None
    layers = [
        layer for layer in getattr(model, "layers", [])
        if not isinstance(layer, keras.layers.InputLayer)
    ]
    if layers and isinstance(layers[0], keras.layers.Rescaling):
        return (0.0, 255.0)
    ours = {"keras_bft>ButterflyFusion", "keras_bft>ChannelSplit", "keras_bft>ChannelShuffle"}
    if any(keras.saving.get_registered_name(type(layer)) in ours for layer in layers):
        return (-1.0, 1.0)
    return None


def default_preprocess(data, expected_range):
    """What `preprocess=None` means for `data`: for an image folder (pixels in [0, 255]),
    the scaling to the model's expected range; for anything else, no change."""
    if not is_image_folder(data) or expected_range is None:
        return None
    if expected_range == (-1.0, 1.0):
        return "mobilenet"
    return None


def _far_apart(value_range, expected_range):
    low, high = value_range
    expected_low, expected_high = expected_range
    span = expected_high - expected_low
    return high > expected_high + span or low < expected_low - span or high - low < span / 10


def _image_files(path, argument):
    files = sorted(
        os.path.join(root, name)
        for root, _, names in os.walk(path)
        for name in names
        if name.lower().endswith(IMAGE_EXTENSIONS)
    )
    if not files:
        raise ValueError(
            f"`{argument}` is a folder without images ({', '.join(IMAGE_EXTENSIONS)}). "
            f"Received: {argument}={path!r}"
        )
    return files


def _image_folder(path, inputs, num_samples, argument, progress):
    import keras

    files = _image_files(path, argument)
    shape = inputs[0].shape
    if len(inputs) != 1 or len(shape) != 4:
        raise ValueError(
            f"An image folder can only calibrate a model with one 4D image input. Received: "
            f"{argument}={path!r} for inputs {[(i.name, i.shape) for i in inputs]}"
        )
    height, width, channels = shape[1:]
    mode = {1: "grayscale", 3: "rgb", 4: "rgba"}.get(channels)
    if mode is None:
        raise ValueError(
            f"Images cannot fill an input with {channels} channels (channels last). "
            f"Received: {argument}={path!r} for input shape {shape}"
        )
    files = files[:num_samples]
    if progress:
        print(f"Loading {len(files)} calibration images from {path}", flush=True)
    bar = keras.utils.Progbar(len(files), verbose=progress, unit_name="image") if progress else None
    for i, name in enumerate(files):
        try:
            image = keras.utils.load_img(name, color_mode=mode, target_size=(height, width))
        except Exception as error:  # PIL raises several types for a corrupt file
            raise ValueError(
                f"`{argument}` holds an image that cannot be read ({type(error).__name__}: "
                f"{error}). Received: {argument}={path!r}, file {name!r}"
            ) from None
        if bar is not None:
            bar.update(i + 1)
        yield [keras.utils.img_to_array(image, dtype="float32")]


def _array_file(path, inputs, argument):
    try:
        if path.endswith(".npz"):
            with np.load(path, allow_pickle=False) as archive:
                names = [i.name for i in inputs]
                if len(inputs) > 1 and set(names) <= set(archive.files):
                    return [archive[n] for n in names]
                if len(inputs) > 1:
                    raise ValueError(
                        f"`{argument}` for a model with inputs {names} must be a .npz with one "
                        f"array per input name. Received: {argument}={path!r} with arrays "
                        f"{archive.files}"
                    )
                key = "x" if "x" in archive.files else archive.files[0]
                return archive[key]
        return np.load(path, allow_pickle=False)
    except ValueError as error:
        if "Received:" in str(error):
            raise
        raise ValueError(
            f"`{argument}` cannot be read as numeric arrays ({error}). Received: {argument}={path!r}"
        ) from None
    except (OSError, EOFError, IndexError) as error:
        raise ValueError(
            f"`{argument}` is not a readable .npy/.npz file ({type(error).__name__}: {error}). "
            f"Received: {argument}={path!r}"
        ) from None


def _split_inputs(data, inputs, argument, received):
    """One array per input from arrays/list/dict data (samples first)."""
    names = [i.name for i in inputs]
    if isinstance(data, dict):
        if set(data) != set(names):
            raise ValueError(
                f"`{argument}` as a dict must have one entry per model input {names}. "
                f"Received: {argument}={received}"
            )
        return [data[n] for n in names]
    if len(inputs) == 1:
        return [data]
    if not isinstance(data, (list, tuple)) or len(data) != len(inputs):
        count = len(data) if isinstance(data, (list, tuple)) else 1
        raise ValueError(
            f"`{argument}` must hold one array per model input ({len(inputs)}: {names}). "
            f"Received: {argument}={received} ({count} array(s))"
        )
    return list(data)


def _array_samples(data, inputs, num_samples, argument, received):
    arrays = []
    for array, model_input in zip(_split_inputs(data, inputs, argument, received), inputs):
        array = _numeric(array, argument, received, model_input)
        rank = len(model_input.shape)
        if array.ndim == rank - 1:
            array = array[None]
        if array.ndim != rank:
            raise ValueError(
                f"`{argument}` arrays must have the model input's rank ({rank}, samples first) or "
                f"one less (one sample). Received: {argument}={received}, an array of shape "
                f"{array.shape} for input {model_input.name!r} of shape {model_input.shape}"
            )
        arrays.append(array)
    counts = {a.shape[0] for a in arrays}
    if len(counts) != 1:
        raise ValueError(
            f"`{argument}` arrays must hold as many samples each. Received: {argument}={received} "
            f"with {[a.shape[0] for a in arrays]} samples"
        )
    for i in range(min(num_samples, arrays[0].shape[0])):
        yield [a[i] for a in arrays]


def _numeric(array, argument, received, model_input):
    try:
        array = np.asarray(array)
    except (ValueError, TypeError) as error:  # ragged lists
        raise ValueError(
            f"`{argument}` is not a numeric array ({error}). Received: {argument}={received}"
        ) from None
    if array.dtype.kind not in "biuf":
        raise ValueError(
            f"`{argument}` must hold numbers; input {model_input.name!r} got dtype {array.dtype}. "
            f"Received: {argument}={received}"
        )
    return array


def _dataset_samples(data, inputs, num_samples, argument, received):
    count = 0
    for element in data.as_numpy_iterator():
        if isinstance(element, tuple) and len(element) == 2 and len(inputs) == 1:
            element = element[0]  # (x, y) pairs: calibrate on x
        elif isinstance(element, tuple) and len(element) == 2 and isinstance(element[0], (dict, tuple, list)):
            element = element[0]
        parts = [
            _numeric(p, argument, received, i)
            for p, i in zip(_split_inputs(element, inputs, argument, received), inputs)
        ]
        batched = parts[0].ndim == len(inputs[0].shape)
        for i in range(parts[0].shape[0] if batched else 1):
            if count >= num_samples:
                return
            yield [p[i] if batched else p for p in parts]
            count += 1


def _callable_samples(data, inputs, num_samples, argument, received):
    for count, element in enumerate(data()):
        if count >= num_samples:
            return
        parts = _split_inputs(element, inputs, argument, received)
        parts = [_numeric(p, argument, received, i) for p, i in zip(parts, inputs)]
        yield [p[0] if p.ndim == len(i.shape) and p.shape[0] == 1 else p for p, i in zip(parts, inputs)]


def _raw_samples(data, inputs, num_samples, argument, progress):
    received = describe(data)
    if isinstance(data, (str, os.PathLike)):
        path = os.fspath(data)
        if os.path.isdir(path):
            return _image_folder(path, inputs, num_samples, argument, progress)
        if not os.path.exists(path):
            raise ValueError(f"`{argument}`: no such file or folder. Received: {argument}={path!r}")
        if not path.lower().endswith((".npy", ".npz")):
            raise ValueError(
                f"`{argument}` as a path must be an image folder or a .npy/.npz file. "
                f"Received: {argument}={path!r}"
            )
        return _array_samples(_array_file(path, inputs, argument), inputs, num_samples, argument, received)
    tf = sys.modules.get("tensorflow")
    if tf is not None and isinstance(data, tf.data.Dataset):
        return _dataset_samples(data, inputs, num_samples, argument, received)
    if callable(data):
        return _callable_samples(data, inputs, num_samples, argument, received)
    return _array_samples(data, inputs, num_samples, argument, received)


def load(
    data,
    inputs,
    num_samples=100,
    preprocess=None,
    expected_range=None,
    argument="representative_data",
    preprocess_argument="preprocess",
    progress=0,
):
    """Loads, preprocesses and checks calibration data for a model's inputs.

    Args:
        data: a NumPy array (samples first; a list of arrays, or a dict by input
            name, for several inputs), a `tf.data.Dataset` (of samples, batches
            or `(x, y)` pairs), a folder of images (searched recursively, resized
            to the input size, pixels in [0, 255] before `preprocess`), a
            `.npy`/`.npz` file, a callable yielding samples with a batch axis
            (TFLite's `representative_dataset` convention), or an already
            loaded `Calibration`.
        inputs: the model's `ModelInput`s.
        num_samples: at most this many samples are used.
        preprocess: a spec for `preprocessing` applied to each sample.
        expected_range: the input range the model expects (see
            `expected_input_range`), or None; a calibration range far from it
            warns.
        argument: the argument (or CLI flag) named in errors.
        preprocess_argument: the preprocessing argument (or CLI flag) named in
            errors and warnings.
        progress: 1 or 2 shows a `keras.utils.Progbar` (2: one line, for logs)
            while images load.

    Returns:
        A `Calibration`.

    Raises:
        ValueError: no sample, a sample of the wrong shape or type, a
            non-finite value (NaN, inf, or a float too large for the input's
            dtype), a missing or unreadable file.
    """
    if isinstance(data, Calibration):
        wanted = {i.name: tuple(i.shape[1:]) for i in inputs}
        for sample in data.samples:
            if {n: tuple(a.shape[1:]) for n, a in sample.items()} != wanted:
                raise ValueError(
                    f"`{argument}` was loaded for other inputs than the model's {wanted}. "
                    f"Received: {argument}={data.source}"
                )
        return data
    if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or num_samples < 1:
        raise ValueError(
            f"`num_calibration_samples` must be a positive integer. Received: {num_samples!r}"
        )
    function = preprocessing(preprocess, preprocess_argument)
    received = describe(data)
    samples = []
    low, high = np.inf, -np.inf
    for index, sample in enumerate(_raw_samples(data, inputs, int(num_samples), argument, progress)):
        checked = {}
        for array, model_input in zip(sample, inputs):
            checked[model_input.name] = _checked(
                array, model_input, function, index, argument, received
            )
        first = checked[inputs[0].name]
        low, high = min(low, float(first.min())), max(high, float(first.max()))
        samples.append(checked)
    if not samples:
        raise ValueError(f"`{argument}` holds no samples. Received: {argument}={received}")
    if expected_range is not None and _far_apart((low, high), expected_range):
        warnings.warn(
            f"The calibration data's range [{low:.3g}, {high:.3g}] is far from the model's expected "
            f"input range [{expected_range[0]:g}, {expected_range[1]:g}]; int8 ranges calibrated on "
            f"it will not fit real inputs. State the preprocessing with `{preprocess_argument}` "
            f"(e.g. 'mobilenet' for pixels in [0, 255] to [-1, 1]). Received: {argument}={received}",
            UserWarning,
            stacklevel=3,
        )
    return Calibration(tuple(samples), received, (low, high), argument)


def _checked(array, model_input, function, index, argument, received):
    where = f"sample {index}, input {model_input.name!r}"
    if function is not None:
        array = function(array)
    try:
        with np.errstate(over="ignore", invalid="ignore"):
            value = np.asarray(array).astype(model_input.dtype)
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"`{argument}` {where} cannot be cast to {model_input.dtype} ({error}). "
            f"Received: {argument}={received}"
        ) from None
    if value.ndim == len(model_input.shape) and value.shape[0] == 1:
        value = value[0]
    if tuple(value.shape) != tuple(model_input.shape[1:]):
        raise ValueError(
            f"`{argument}` {where} has shape {tuple(value.shape)}; the model input needs "
            f"{tuple(model_input.shape[1:])} (without batch). Received: {argument}={received}"
        )
    if value.dtype.kind == "f" and not np.all(np.isfinite(value)):
        nan = int(np.isnan(value).sum())
        inf = int(np.isinf(value).sum())
        raise ValueError(
            f"`{argument}` {where} holds non-finite values ({nan} NaN, {inf} inf in "
            f"{model_input.dtype}; values beyond float32's ~3.4e38, e.g. 1e38 scaled up, overflow "
            f"to inf). Calibration needs finite values. Received: {argument}={received}"
        )
    return value[None]
