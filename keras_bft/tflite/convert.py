"""Keras model -> .tflite with TFLite builtin ops only, for LiteRT on Android.

`convert` runs these steps, one function each:

1. `_check_arguments` and `check_output_path`: every argument, before any work;
2. `model_inputs`: the static input shapes, dtypes and names;
3. `calibration.load`: the int8 calibration data, checked;
4. `static_float32_model`: a rebuild with static input shapes and float32
   layers, for models with unknown input dimensions or mixed precision;
5. `rewrite.prepare_for_export`: each ButterflyFusion in its fastest exact form;
6. `_save`: a SavedModel whose `serving_default` signature has the Keras
   input and output names;
7. `_check_activations`: int8 calibration data that overflows float32 inside
   the model is refused (TFLite's calibrator aborts the process on it);
8. `_convert`: `TFLiteConverter.from_saved_model` with builtin ops only;
9. `_check_result`: builtin ops only, int8 really int8;
10. `write_atomic`.

TensorFlow and Keras are imported inside the functions that need them, so
that the command line's `--help` stays instant.
"""

import contextlib
import dataclasses
import json
import os
import re
import secrets
import tempfile
import warnings

import numpy as np

from keras_bft.tflite import calibration
from keras_bft.tflite import graph
from keras_bft.tflite import search
from keras_bft.tflite.lowering_report import LoweringReport

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
IO_TYPES = ("float32", "int8")
SIGNATURE_KEY = "serving_default"

_REDUCED_PRECISION = ("float16", "bfloat16", "mixed_float16", "mixed_bfloat16")


@dataclasses.dataclass(frozen=True)
class ConversionResult:
    """What `convert` produced.

    `keras_bft.tflite`'s `predict`, `verify`, `benchmark` and `op_histogram`
    accept it wherever they accept .tflite bytes or a path.

    Attributes:
        tflite_bytes: the .tflite flatbuffer.
        path: where it was written, or None.
        report: the `LoweringReport` of `rewrite.prepare_for_export` (one
            decision per ButterflyFusion; none with `optimize=False`).
        quantization: the precision it was converted to.
        input_names: the `serving_default` signature's input names.
        output_names: its output names, in the Keras model's order.
    """

    tflite_bytes: bytes = dataclasses.field(repr=False)
    path: object
    report: object
    quantization: str
    input_names: tuple
    output_names: tuple

    @property
    def size_bytes(self):
        return len(self.tflite_bytes)


# ---------------------------------------------------------------- arguments and files


def check_output_path(output_path, overwrite=False, argument="output_path"):
    """Checks that a file can be written at `output_path` before any work is done.

    Args:
        output_path: the path, or None (nothing to check).
        overwrite: whether an existing file may be replaced.
        argument: the argument (or CLI flag) named in errors.

    Returns:
        The path as a string, or None.

    Raises:
        ValueError: an empty path, a folder, a missing or read-only folder.
        FileExistsError: the file exists and `overwrite` is False.
    """
    if output_path is None:
        return None
    if not isinstance(output_path, (str, os.PathLike)):
        raise TypeError(f"`{argument}` must be a path. Received: {argument}={output_path!r}")
    path = os.fspath(output_path)
    if not path.strip():
        raise ValueError(f"`{argument}` must name a file. Received: {argument}={path!r}")
    if os.path.isdir(path) or path.endswith(os.sep):
        raise ValueError(f"`{argument}` names a folder, not a file. Received: {argument}={path!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(
            f"The folder of `{argument}` does not exist ({folder!r}). Received: {argument}={path!r}"
        )
    probe = _temp_path(path)
    try:  # the one reliable test (permissions, read-only mounts, root, /proc): create a file
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.remove(probe)
    except OSError as error:
        raise ValueError(
            f"The folder of `{argument}` is not writable ({folder!r}: {error.strerror}). "
            f"Received: {argument}={path!r}"
        ) from None
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"Refusing to overwrite the existing file {path!r}; pass overwrite=True (--force). "
            f"Received: {argument}={path!r}"
        )
    return path


def _temp_path(path):
    folder = os.path.dirname(os.path.abspath(path))
    return os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(6)}.tmp")


def write_atomic(data, output_path, overwrite=False, argument="output_path"):
    """Writes `data` to `output_path` through a temporary file in the same folder, then renames.

    An interrupted write never leaves a partial file. The file gets mode
    0666 minus the umask, as Keras' own saves do.

    Args:
        data: the bytes.
        output_path: the file to write.
        overwrite: allow replacing an existing file.
        argument: the argument (or CLI flag) named in errors.
    """
    path = check_output_path(output_path, overwrite, argument)
    temp_path = _temp_path(path)
    # os.open applies the umask to 0o666 (mkstemp would leave 0o600).
    handle = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def _check_arguments(model, quantization, io_type, batch_size, float_ops, verbose):
    import keras

    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model={model!r}")
    if quantization not in QUANTIZATIONS:
        raise ValueError(
            f"`quantization` must be one of {QUANTIZATIONS}. Received: quantization={quantization!r}"
        )
    if io_type not in IO_TYPES:
        raise ValueError(f"`io_type` must be one of {IO_TYPES}. Received: io_type={io_type!r}")
    if io_type == "int8" and quantization != "int8":
        raise ValueError(
            "`io_type='int8'` needs quantization='int8'. "
            f"Received: io_type={io_type!r}, quantization={quantization!r}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    if isinstance(float_ops, str) or not all(isinstance(op, str) for op in float_ops):
        raise ValueError(
            "`float_ops` must be a tuple of TFLite op names such as ('SOFTMAX',). "
            f"Received: float_ops={float_ops!r}"
        )
    if verbose not in (0, 1, 2):
        raise ValueError(f"`verbose` must be 0, 1 or 2. Received: verbose={verbose!r}")
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "TFLite conversion needs the TensorFlow backend (KERAS_BACKEND=tensorflow). "
            f"Received backend: {keras.backend.backend()!r}"
        )


# ---------------------------------------------------------------- the model's inputs and outputs


def _input_shapes_argument(input_shape, count, argument):
    """`input_shape` as a list of tuples (one per input), checked."""
    if input_shape is None:
        return None
    shapes = input_shape
    if isinstance(shapes, (list, tuple)) and shapes and not isinstance(shapes[0], (list, tuple)):
        shapes = [shapes]
    ok = isinstance(shapes, (list, tuple)) and len(shapes) > 0
    for shape in shapes if ok else ():
        ok = ok and isinstance(shape, (list, tuple)) and len(shape) > 0 and all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d > 0 for d in shape
        )
    if not ok:
        raise ValueError(
            f"`{argument}` must be a shape without batch, e.g. (224, 224, 3), of positive integers "
            f"(a list of them for several inputs). Received: {argument}={input_shape!r}"
        )
    if count is not None and len(shapes) != count:
        raise ValueError(
            f"`{argument}` must give one shape per model input ({count}). "
            f"Received: {argument}={input_shape!r}"
        )
    return [tuple(int(d) for d in s) for s in shapes]


def _keras_inputs(model):
    try:
        inputs = model.inputs
    except (AttributeError, ValueError):
        return None
    return list(inputs) if inputs else None


def model_inputs(model, batch_size=1, input_shape=None, argument="input_shape"):
    """The static inputs of `model`'s export: a list of `calibration.ModelInput`.

    Args:
        model: a Keras model.
        batch_size: the static batch size.
        input_shape: shapes without batch for inputs with unknown dimensions
            (one tuple, or a list of them for several inputs).
        argument: the argument (or CLI flag) named in errors.

    Returns:
        One `ModelInput(name, shape, dtype)` per input: names are the keys of a
        dict input, else the Keras input tensors' names; shapes start with
        `batch_size`.
    """
    import keras

    tensors = _keras_inputs(model)
    given = _input_shapes_argument(input_shape, None if tensors is None else len(tensors), argument)
    if tensors is None:
        if given is None:
            raise ValueError(
                "The model has no defined inputs (a subclassed model never called); pass "
                f"`{argument}` (without batch). Received: {argument}={input_shape!r}"
            )
        names = ["input"] if len(given) == 1 else [f"input_{i}" for i in range(len(given))]
        return [
            calibration.ModelInput(name, (batch_size, *shape), "float32")
            for name, shape in zip(names, given)
        ]
    structure = model.input
    if isinstance(structure, dict):
        by_id = {id(t): key for key, t in structure.items()}
        names = [by_id[id(t)] for t in tensors]
    else:
        names = [t.name for t in tensors]
    result = []
    for i, tensor in enumerate(tensors):
        known = tuple(tensor.shape[1:])
        shape = known
        if given is not None:
            if len(given[i]) != len(known) or any(
                k is not None and k != g for k, g in zip(known, given[i])
            ):
                raise ValueError(
                    f"`{argument}` {given[i]} does not fit the model's input {names[i]!r} of shape "
                    f"{known} (only unknown dimensions can be set). Received: {argument}={input_shape!r}"
                )
            shape = given[i]
        if any(d is None for d in shape):
            raise ValueError(
                "Every input dimension but the batch must be known for a static LiteRT graph; pass "
                f"`{argument}`. Received: input {names[i]!r} of shape {(None, *known)}, "
                f"{argument}={input_shape!r}"
            )
        dtype = keras.backend.standardize_dtype(tensor.dtype)
        result.append(calibration.ModelInput(names[i], (int(batch_size), *map(int, shape)), dtype))
    return result


def call_argument(model, tensors, names):
    """The model's call argument from one tensor per input (named `names`, in input order)."""
    structure = model.input if _keras_inputs(model) is not None else None
    if isinstance(structure, dict):
        return dict(zip(names, tensors))
    if isinstance(structure, (list, tuple)) or len(tensors) > 1:
        return list(tensors)
    return tensors[0]


def output_names(model, outputs):
    """`(structure, names, tensors)` of a model call's `outputs`.

    `structure` is `"dict"` (names are the keys, in order), `"list"` or
    `"single"` (names are `model.output_names` where the model has them,
    else the last layer's name or `output_<i>`).
    """
    if isinstance(outputs, dict):
        return "dict", [str(k) for k in outputs], list(outputs.values())
    flat = list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]
    names = list(getattr(model, "output_names", None) or [])
    if len(names) != len(flat) or len(set(names)) != len(names):
        layers = getattr(model, "layers", None)
        if len(flat) == 1 and layers:
            names = [layers[-1].name]
        else:
            names = ["output"] if len(flat) == 1 else [f"output_{i}" for i in range(len(flat))]
    return ("list" if isinstance(outputs, (list, tuple)) else "single"), names, flat


def _calibration_data(model, inputs, quantization, data, num_samples, preprocess, verbose):
    """The checked `calibration.Calibration` for an int8 conversion, or None."""
    if quantization != "int8" or data is None:
        return None
    expected = calibration.expected_input_range(model)
    if preprocess is None:
        preprocess = calibration.default_preprocess(data, expected)
    return calibration.load(data, inputs, num_samples, preprocess, expected, progress=verbose)


# ---------------------------------------------------------------- mixed precision


def _reduced_precision_policies(config, found=None):
    """Names of reduced-precision dtype policies in a Keras config."""
    found = set() if found is None else found
    if isinstance(config, dict):
        for key, value in config.items():
            if key == "dtype":
                name = value.get("config", {}).get("name") if isinstance(value, dict) else value
                if name in _REDUCED_PRECISION:
                    found.add(name)
            _reduced_precision_policies(value, found)
    elif isinstance(config, list):
        for value in config:
            _reduced_precision_policies(value, found)
    return found


def _float32_config(config):
    if isinstance(config, dict):
        result = {}
        for key, value in config.items():
            name = value.get("config", {}).get("name") if isinstance(value, dict) else value
            result[key] = "float32" if key == "dtype" and name in _REDUCED_PRECISION else _float32_config(value)
        return result
    if isinstance(config, list):
        return [_float32_config(v) for v in config]
    return config


@contextlib.contextmanager
def _float32_policy():
    """Layers created inside (the float32 rebuild, the export rewrite) get float32."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def _reduced_precision(model):
    """The reduced-precision dtype policies of `model`'s layers, and its config (None if it has none)."""
    import keras

    try:
        config = keras.saving.serialize_keras_object(model)
    except (NotImplementedError, TypeError, ValueError):
        return ({model.dtype_policy.name} & set(_REDUCED_PRECISION)), None
    return _reduced_precision_policies(config), config


def static_float32_model(model, inputs):
    """`model` itself, or a rebuild of it with static input shapes and float32 layers.

    Two things need a rebuild (from the layers' configs, with the same
    weights; the caller's model is not changed):

    - inputs with unknown dimensions (set by `input_shape`): the export
      rewrite needs each layer's static input shape;
    - a mixed-precision model (`mixed_float16`): LiteRT's float and int8
      kernels take float32 graphs, and float16 compute with its casts would
      not convert.

    Args:
        model: a Keras model.
        inputs: its static inputs (`model_inputs`).

    Returns:
        `model`, or the rebuilt model.

    Raises:
        ValueError: the model has reduced-precision layers and cannot be
            rebuilt (e.g. a subclassed model without `get_config`); the message
            names the dtype policy and the fix.
    """
    import keras

    policies, _ = _reduced_precision(model)
    tensors = _keras_inputs(model)
    dynamic = tensors is not None and any(
        tuple(t.shape[1:]) != tuple(i.shape[1:]) for t, i in zip(tensors, inputs)
    )
    if not policies and not dynamic:
        return model

    def float32_layer(layer):
        return layer.__class__.from_config(_float32_config(layer.get_config()))

    try:
        if tensors is None:
            raise NotImplementedError("a subclassed model cannot be cloned layer by layer")
        static = [
            keras.Input(batch_shape=(None, *i.shape[1:]), dtype=t.dtype, name=t.name)
            for t, i in zip(tensors, inputs)
        ]
        structure = model.input
        if isinstance(structure, dict):
            by_id = {id(t): s for t, s in zip(tensors, static)}
            static = {key: by_id[id(t)] for key, t in structure.items()}
        elif not isinstance(structure, (list, tuple)):
            static = static[0]
        rebuilt = keras.models.clone_model(model, input_tensors=static, clone_function=float32_layer)
        weights = model.get_weights()
        if [tuple(w.shape) for w in weights] != [tuple(w.shape) for w in rebuilt.get_weights()]:
            raise ValueError("the rebuild has other weights than the model")
        rebuilt.set_weights([np.asarray(w, "float32") if w.dtype.kind == "f" else w for w in weights])
    except Exception as error:  # cloning raises many types
        if not policies:
            return model  # exact as is; only the export rewrite misses the static shapes
        raise ValueError(
            f"Model {model.name!r} uses the dtype policy {sorted(policies)}: LiteRT needs a float32 "
            f"graph, and rebuilding the model in float32 failed ({type(error).__name__}: {error}). "
            "Build the same model under keras.config.set_dtype_policy('float32'), copy the weights "
            "(model32.set_weights(model.get_weights())) and convert that."
        ) from error
    return rebuilt


# ---------------------------------------------------------------- tracing and conversion


def _save(export_model, inputs, folder):
    """Writes a SavedModel with one `serving_default` signature.

    Returns the output record (`structure`, `names`) and the concrete function.
    The SavedModel holds the function and the model's variables only: saving
    the Keras model object itself (as `keras.export.ExportArchive` does) also
    serializes every layer and took 5x longer on a MobileNetV2 at 224x224.
    """
    import tensorflow as tf

    specs = [tf.TensorSpec(i.shape, i.dtype, name=i.name) for i in inputs]
    record = {}

    def serve(*tensors):
        outputs = export_model(call_argument(export_model, tensors, [i.name for i in inputs]), training=False)
        structure, names, flat = output_names(export_model, outputs)
        record.update(structure=structure, names=names)
        return dict(zip(names, flat))

    function = tf.function(serve, input_signature=specs).get_concrete_function()
    module = tf.Module()
    # The backend (tf.Variable) objects the function captured: saved with it, frozen by the converter.
    module.model_variables = [v.value for v in export_model.variables]
    tf.saved_model.save(module, folder, signatures={SIGNATURE_KEY: function})
    return record, function


def _has_fake_quant(function):
    graph_def = function.graph.as_graph_def()
    nodes = list(graph_def.node)
    for library_function in graph_def.library.function:
        nodes.extend(library_function.node_def)
    return any(node.op.startswith("FakeQuant") for node in nodes)


def _layer_names_in(message, model, function):
    """Layers owning the TF ops the converter rejected (`'tf.Op' op is neither ...`)."""
    op_types = set(re.findall(r"'tf\.(\w+)' op", message))
    layer_names = {layer.name for layer in model._flatten_layers(include_self=False)}
    names = []
    if function is not None and op_types:
        graph_def = function.graph.as_graph_def()
        nodes = list(graph_def.node)
        for library_function in graph_def.library.function:
            nodes.extend(library_function.node_def)
        for node in nodes:
            if node.op in op_types:
                for part in node.name.split("/"):
                    # Name scopes may carry a uniquifying suffix: "conv_1" for "conv".
                    base = part if part in layer_names else re.sub(r"_\d+$", "", part)
                    if base in layer_names and base not in names:
                        names.append(base)
    return names


def _fail_unconvertible(error, model, detail=None, function=None):
    message = str(error)
    names = _layer_names_in(message, model, function)
    where = f"layer(s) {', '.join(repr(n) for n in names)}" if names else "some layer"
    first_lines = "\n".join(message.strip().splitlines()[:12]) if detail is None else detail
    raise ValueError(
        f"Model {model.name!r} cannot be expressed in TFLite builtin ops: {where} uses an op "
        "outside them (SELECT_TF_OPS/Flex is never enabled: Android's LiteRT runtime lacks it). "
        f"Converter said:\n{first_lines}"
    ) from (error if isinstance(error, BaseException) else None)


def _converter(folder, quantization, io_type, dataset):
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[SIGNATURE_KEY])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantization == "int8":
        if dataset is not None:
            converter.representative_dataset = dataset
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        # Else a QAT model: TF 2.21 rejects TFLITE_BUILTINS_INT8 without a
        # representative dataset even for fake-quant graphs (its metrics hook
        # validates before it sees the graph). The fake-quant ranges make the
        # ops int8 anyway; `_check_result` checks it.
        io_dtype = tf.int8 if io_type == "int8" else tf.float32
        converter.inference_input_type = io_dtype
        converter.inference_output_type = io_dtype
    return converter


@contextlib.contextmanager
def _calibrator_warnings_silenced():
    # TF's calibrator opens the deprecated tf.lite.Interpreter to map samples
    # given by input name onto tensors; nothing a caller can act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated")
        yield


def _check_activations(folder, data):
    """Refuses calibration samples that drive a tensor of the float model out of float32's range.

    TFLite's calibrator aborts the process ("scale out of expressed type
    range") on an infinite or overflowing range; the float LiteRT model, run
    with every tensor kept, finds the sample and the tensor first.
    """
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    converter = tf.lite.TFLiteConverter.from_saved_model(folder, signature_keys=[SIGNATURE_KEY])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    try:
        float_model = converter.convert()
    except Exception:  # an unconvertible model: `_convert` reports it
        return
    with warnings.catch_warnings():
        # "intended for debugging": keeping every tensor is the point here.
        warnings.filterwarnings("ignore", message=".*experimental_preserve_all_tensors")
        interpreter = Interpreter(model_content=float_model, experimental_preserve_all_tensors=True)
    runner = interpreter.get_signature_runner(SIGNATURE_KEY)
    details = [d for d in interpreter.get_tensor_details() if d["dtype"] == np.float32]
    limit = np.finfo(np.float32).max / 2  # a range wider than this overflows its scale
    for index, sample in enumerate(data.samples):
        runner(**sample)
        for detail in details:
            try:
                value = interpreter.get_tensor(detail["index"])
            except ValueError:  # a tensor without data (freed or never written)
                continue
            if value.size and not np.all(np.abs(value) <= limit):
                worst = float(np.nanmax(np.abs(value))) if not np.all(np.isnan(value)) else float("nan")
                raise ValueError(
                    f"`{data.argument}` sample {index} drives the model's tensor {detail['name']!r} out "
                    f"of float32's range (|x| up to {worst:.3g}, or NaN; int8 calibration needs "
                    f"|x| <= {limit:.3g}). Scale the calibration data as the model expects. "
                    f"Received: {data.argument}={data.source}"
                )


def _float_ops_left(tflite_model, allowed):
    """Ops of an int8 model that run in float, besides `allowed` and the QUANTIZE/DEQUANTIZE around them."""
    skip = set(allowed) | {"QUANTIZE", "DEQUANTIZE"}
    return sorted(
        {name for name, dtype in graph.operators(tflite_model) if dtype == "float32" and name not in skip}
    )


def _quantized_float_ops(tflite_model, float_ops):
    """Names of ops of `float_ops` that came out quantized."""
    return sorted(
        {name for name, dtype in graph.operators(tflite_model) if name in float_ops and dtype != "float32"}
    )


def _quantize_with_float_ops(converter, float_ops, dataset, io_type):
    """Full int8 with `float_ops` left in float, through the QuantizationDebugger deny list."""
    import tensorflow as tf
    from tensorflow.lite.python import util as lite_util

    # Float kernels for the deny-listed ops.
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS_INT8,
        tf.lite.OpsSet.TFLITE_BUILTINS,
    ]
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter,
        debug_dataset=dataset,
        debug_options=tf.lite.experimental.QuantizationDebugOptions(
            denylisted_ops=list(float_ops)
        ),
    )
    quantized = debugger.get_nondebug_quantized_model()
    if io_type == "int8":
        # The debugger's model keeps float I/O whatever the converter asked.
        quantized = lite_util.modify_model_io_type(quantized, tf.int8, tf.int8)
    return quantized


def _convert(folder, export_model, function, quantization, io_type, data, float_ops):
    """The .tflite bytes: one conversion, plus a second keeping `float_ops` in float when needed."""
    dataset = None if data is None else data.dataset()

    try:
        with _calibrator_warnings_silenced():
            tflite_model = _converter(folder, quantization, io_type, dataset).convert()
    except Exception as error:  # the converter raises several error types
        _fail_unconvertible(error, export_model, function=function)

    if quantization == "int8" and float_ops:
        stuck = _quantized_float_ops(tflite_model, set(float_ops))
        if stuck and data is None:
            # TF's QuantizationDebugger (the float-op path) rejects fake-quant graphs.
            raise ValueError(
                f"Ops {stuck} came out in int8, which XNNPACK does not run, and a "
                "quantization-aware model cannot keep them in float. Build the model "
                "with classifier_activation=None (logits; apply softmax in the app), or "
                "pass float_ops=() to accept them in int8 (not delegated). Received: "
                f"float_ops={tuple(float_ops)!r}"
            )
        if stuck:
            with _calibrator_warnings_silenced():
                tflite_model = _quantize_with_float_ops(
                    _converter(folder, quantization, io_type, dataset), stuck, dataset, io_type
                )
    return bytes(tflite_model)


def _check_result(tflite_model, export_model, quantization, float_ops, qat, data):
    histogram = graph.op_histogram(tflite_model)
    outside = [name for name in histogram if name.startswith(("CUSTOM", "DELEGATE", "FLEX"))]
    if outside:
        _fail_unconvertible(None, export_model, detail=f"non-builtin ops in the result: {outside}")
    if quantization != "int8":
        return
    left = _float_ops_left(tflite_model, float_ops)
    if not left:
        return
    if qat:
        _fail_unconvertible(
            None,
            export_model,
            detail=(
                f"ops {left} stayed in float: the quantization-aware model lacks fake-quant "
                "ranges there (build it with keras_bft.quantization.quantize_model)"
            ),
        )
    raise ValueError(
        f"quantization='int8' was requested but ops {left} of model {export_model.name!r} came out "
        f"in float (the calibration data gave them no usable range). Received: "
        f"{data.argument if data is not None else 'representative_data'}="
        f"{data.source if data is not None else None}, float_ops={tuple(float_ops)!r}"
    )


def convert(
    model,
    quantization="float32",
    representative_data=None,
    output_path=None,
    overwrite=False,
    io_type="float32",
    batch_size=1,
    input_shape=None,
    optimize=True,
    float_ops=("SOFTMAX",),
    num_calibration_samples=100,
    preprocess=None,
    cost_model=None,
    verbose=0,
    objective="latency",
):
    """Converts a Keras model to LiteRT (.tflite) with builtin ops only.

    Every `ButterflyFusion` is first rewritten to its fastest exact lowering for
    the chosen precision (a dense 1x1 conv fold, merged stages, grouped-conv or
    batched-matmul stages; see `keras_bft.tflite.rewrite`), and int8
    hard-swish is rewritten into ops XNNPACK delegates. The graph is traced
    with a static batch (dynamic shapes add SHAPE/GATHER ops that split the
    XNNPACK partitions). SELECT_TF_OPS is never enabled.

    The file carries a `serving_default` signature whose inputs and outputs
    have the Keras model's names (the keys of dict inputs/outputs, else the
    input tensors' names and `model.output_names`), and a record of the output
    structure, so `predict` returns outputs shaped like the model's. A
    `mixed_float16` model is converted through a float32 rebuild with the same
    weights (see `static_float32_model`).

    Args:
        model: a `keras.Model` (TensorFlow backend); single, list or dict
            inputs and outputs.
        quantization: `"float32"`, `"float16"` (fp16 weights), `"dynamic"`
            (int8 weights, float activations) or `"int8"` (full integer).
        representative_data: int8 calibration data: a NumPy array (samples
            first; a list, or a dict by input name, for several inputs), a
            `tf.data.Dataset`, a folder of images, a `.npy`/`.npz` path, or a
            callable usable as `representative_dataset`. Checked before
            conversion (shape, dtype, finite values, at least one sample).
            Required for `"int8"` unless the model carries fake-quant ops (QAT).
        output_path: also write the bytes there (through a temporary file and
            a rename; mode 0666 minus umask). Checked before any work.
        overwrite: allow replacing an existing `output_path`.
        io_type: `"float32"` or `"int8"` model inputs/outputs for `"int8"`.
        batch_size: the static batch size of the exported graph.
        input_shape: input shape without batch (a list of them for several
            inputs), for models whose inputs leave dimensions unknown.
        optimize: rewrite `ButterflyFusion` layers for speed (exact). Set
            False to convert the layers as they are.
        float_ops: int8 op names kept in float (XNNPACK lacks their int8
            kernels: `SOFTMAX` in LiteRT 2.3). Applied through the
            `QuantizationDebugger` deny list, only when such an op appears.
        num_calibration_samples: at most this many calibration samples.
        preprocess: how calibration samples map to model inputs:
            `"none"`, `"mobilenet"` (`x / 127.5 - 1`), `"scale:A,B"`
            (`x * A + B`) or a function of one array. Default None: an image
            folder is scaled to what the model expects when it says so (see
            `calibration.expected_input_range`), other data is used as is.
            A calibration range far from the expected one warns.
        cost_model: a `cost_model.CostModel` for the lowering choice (default:
            the one measured on LiteRT, see docs/benchmarks-tflite.md).
        verbose: 1 prints each step (2: progress bars as single lines, for
            logs), 0 is silent.
        objective: what the ButterflyFusion forms are chosen for: `"latency"`
            (the fastest predicted), `"size"` (never more weights than the
            trained stages) or `"balanced"` (the fastest within 1.25x the
            staged weights); see `keras_bft.tflite.search`.

    Returns:
        A `ConversionResult` (`.tflite_bytes`, `.path`, `.report`: a
        `LoweringReport`, whose `str` summarises the forms and which iterates
        over the per-layer decisions).

    Example:

    ```python
    model = keras.Sequential([keras.Input((8, 8, 32)), ButterflyFusion(32)])
    data = np.random.rand(16, 8, 8, 32).astype("float32")
    result = convert(model, "int8", representative_data=data, output_path="m.tflite")
    print(result.path, len(result.tflite_bytes), result.input_names, result.output_names)
    ```
    """
    from keras_bft.tflite import rewrite

    say = print if verbose else (lambda *args, **kwargs: None)
    _check_arguments(model, quantization, io_type, batch_size, float_ops, verbose)
    search.check_objective(objective)
    output_path = check_output_path(output_path, overwrite)
    inputs = model_inputs(model, int(batch_size), input_shape)
    data = _calibration_data(
        model, inputs, quantization, representative_data, num_calibration_samples, preprocess, verbose
    )

    with _float32_policy():
        float_model = static_float32_model(model, inputs)
        report = LoweringReport(quantization, None, tuple(i.shape for i in inputs))
        export_model = float_model
        if optimize:
            say("Choosing each ButterflyFusion's lowering", flush=True)
            export_model, report = rewrite.prepare_for_export(
                float_model, quantization, [i.shape for i in inputs], cost_model=cost_model,
                objective=objective,
                calibration=None if data is None else [[s[i.name] for i in inputs] for s in data.samples],
            )
        with tempfile.TemporaryDirectory() as folder:
            say("Tracing the model", flush=True)
            record, function = _save(export_model, inputs, folder)
            qat = _has_fake_quant(function)
            if quantization == "int8" and data is None and not qat:
                raise ValueError(
                    "quantization='int8' needs `representative_data` (calibration samples: arrays, a "
                    "tf.data.Dataset or an image folder) unless the model is quantization-aware "
                    "(fake-quant ops). Received: representative_data=None"
                )
            if data is not None:
                say(f"Checking {len(data)} calibration samples through the float model", flush=True)
                _check_activations(folder, data)
            say(f"Converting to {quantization}", flush=True)
            tflite_model = _convert(
                folder, export_model, function, quantization, io_type, data, float_ops
            )
    _check_result(tflite_model, export_model, quantization, float_ops, qat, data)
    record = {
        "inputs": [i.name for i in inputs],
        "outputs": record["names"],
        "output_structure": record["structure"],
    }
    tflite_model = graph.with_metadata(
        tflite_model, graph.KERAS_SIGNATURE_METADATA, json.dumps(record).encode()
    )
    if output_path is not None:
        write_atomic(tflite_model, output_path, overwrite)
    return ConversionResult(
        tflite_model, output_path, report, quantization,
        tuple(record["inputs"]), tuple(record["outputs"]),
    )


def calibration_samples(model, data, num_samples=4, preprocess=None, input_shape=None):
    """The first `num_samples` samples of calibration `data`, each a list of batch-1 arrays."""
    inputs = model_inputs(model, 1, input_shape)
    if preprocess is None:
        preprocess = calibration.default_preprocess(data, calibration.expected_input_range(model))
    loaded = calibration.load(data, inputs, num_samples, preprocess)
    return [[sample[i.name] for i in inputs] for sample in loaded.samples]


def sample_inputs(model, num_samples=4, seed=0, input_shape=None):
    """Random inputs of the model's static shape (batch 1 each), for checks and benchmarks."""
    inputs = model_inputs(model, 1, input_shape)
    rng = np.random.default_rng(seed)
    return [
        [rng.uniform(-1.0, 1.0, i.shape).astype(i.dtype) for i in inputs]
        for _ in range(num_samples)
    ]
