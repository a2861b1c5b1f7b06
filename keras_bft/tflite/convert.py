"""Keras model -> .tflite bytes with TFLite builtin ops only, for LiteRT on Android."""

import os
import re
import tempfile

import keras
import numpy as np

from keras_bft.tflite import calibration
from keras_bft.tflite import graph
from keras_bft.tflite import rewrite

QUANTIZATIONS = ("float32", "float16", "dynamic", "int8")
IO_TYPES = ("float32", "int8")


def _static_input_shapes(model, batch_size, input_shape):
    if input_shape is not None:
        shapes = [input_shape] if not isinstance(input_shape[0], (list, tuple)) else input_shape
        shapes = [(batch_size, *tuple(s)) for s in shapes]
    else:
        try:
            inputs = model.inputs
        except (AttributeError, ValueError):
            inputs = None
        if not inputs:
            raise ValueError(
                "The model has no defined inputs; pass `input_shape` (without batch). "
                f"Received: input_shape={input_shape!r}"
            )
        shapes = [(batch_size, *tuple(t.shape[1:])) for t in inputs]
    for shape in shapes:
        if any(d is None for d in shape):
            raise ValueError(
                "Every input dimension but the batch must be known for a static LiteRT graph; "
                f"pass `input_shape`. Received: input shape {shape}"
            )
    return [tuple(int(d) for d in s) for s in shapes]


def _input_dtypes(model, count):
    try:
        return [keras.backend.standardize_dtype(t.dtype) for t in model.inputs]
    except (AttributeError, ValueError, TypeError):
        return ["float32"] * count


def _concrete_function(model, shapes, dtypes):
    import tensorflow as tf

    specs = [tf.TensorSpec(s, d) for s, d in zip(shapes, dtypes)]

    @tf.function
    def serve(*args):
        return model(args[0] if len(args) == 1 else list(args), training=False)

    function = serve.get_concrete_function(*specs)
    # Keras 3 variables are not tracked by the converter: freeze them into constants.
    from tensorflow.python.framework import convert_to_constants

    return convert_to_constants.convert_variables_to_constants_v2(function)


def _has_fake_quant(function):
    return any(op.type.startswith("FakeQuant") for op in function.graph.get_operations())


def _layer_names_in(message, model, function):
    """Layers owning the TF ops the converter rejected (`'tf.Op' op is neither ...`)."""
    op_types = set(re.findall(r"'tf\.(\w+)' op", message))
    layer_names = {layer.name for layer in model._flatten_layers(include_self=False)}
    names = []
    if function is not None and op_types:
        for op in function.graph.get_operations():
            if op.type in op_types:
                for part in op.name.split("/"):
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


def _builtin_set(converter, quantization):
    import tensorflow as tf

    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantization == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif quantization in ("dynamic", "int8"):
        converter.optimizations = [tf.lite.Optimize.DEFAULT]


def _qat_float_ops(tflite_model, io_type):
    """Ops of a converted QAT model that run in float (QUANTIZE/DEQUANTIZE at float I/O excepted)."""
    boundary = ("QUANTIZE", "DEQUANTIZE") if io_type == "float32" else ()
    return sorted(
        {
            name
            for name, dtype in graph.operators(tflite_model)
            if dtype == "float32" and name not in boundary
        }
    )


def _check_float_ops(tflite_model, float_ops):
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


def write_atomic(data, output_path, overwrite=False):
    """Writes `data` to `output_path` through a temporary file in the same folder, then renames.

    Refuses to replace an existing file unless `overwrite=True`.
    """
    output_path = os.fspath(output_path)
    if os.path.exists(output_path) and not overwrite:
        raise FileExistsError(
            f"Refusing to overwrite the existing file {output_path!r}; pass overwrite=True (--force)."
        )
    folder = os.path.dirname(os.path.abspath(output_path))
    os.makedirs(folder, exist_ok=True)
    handle, temp_path = tempfile.mkstemp(prefix=".tmp-", suffix=".tflite", dir=folder)
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(data)
        os.replace(temp_path, output_path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


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
    return_report=False,
):
    """Converts a Keras model to LiteRT (.tflite) bytes with builtin ops only.

    Every `ButterflyFusion` is first rewritten to its fastest exact lowering for
    the chosen precision (a dense 1x1 conv fold, merged stages, grouped-conv or
    batched-matmul stages; see `keras_bft.tflite.rewrite`), and int8
    hard-swish is rewritten into ops XNNPACK delegates. The graph is traced
    with a static batch (dynamic shapes add SHAPE/GATHER ops that split the
    XNNPACK partitions). SELECT_TF_OPS is never enabled.

    Args:
        model: a `keras.Model` (TensorFlow backend).
        quantization: `"float32"`, `"float16"` (fp16 weights), `"dynamic"`
            (int8 weights, float activations) or `"int8"` (full integer).
        representative_data: int8 calibration data: a NumPy array (samples
            first), a `tf.data.Dataset`, a folder of images, a `.npy`/`.npz`
            path, or a callable usable as `representative_dataset`. Required for
            `"int8"` unless the model carries fake-quant ops (QAT).
        output_path: also write the bytes there (through a temporary file and
            a rename).
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
        preprocess: function applied to each calibration sample.
        cost_model: a `rewrite.CostModel` for the lowering choice (default:
            the one measured on LiteRT, see docs/benchmarks-tflite.md).
        return_report: also return the per-layer lowering decisions.

    Returns:
        The .tflite model as `bytes` (and, with `return_report=True`, a tuple
        `(bytes, decisions)`).

    Example:

    ```python
    model = keras.Sequential([keras.Input((8, 8, 32)), ButterflyFusion(32)])
    data = np.random.rand(16, 8, 8, 32).astype("float32")
    tflite_bytes = convert(model, "int8", representative_data=data)
    ```
    """
    import tensorflow as tf

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
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    if output_path is not None and os.path.exists(output_path) and not overwrite:
        raise FileExistsError(
            f"Refusing to overwrite the existing file {os.fspath(output_path)!r}; "
            "pass overwrite=True (--force)."
        )
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "TFLite conversion needs the TensorFlow backend (KERAS_BACKEND=tensorflow). "
            f"Received backend: {keras.backend.backend()!r}"
        )

    shapes = _static_input_shapes(model, batch_size, input_shape)
    dtypes = _input_dtypes(model, len(shapes))
    decisions = []
    export_model = model
    dataset = None
    if quantization == "int8" and representative_data is not None:
        dataset = calibration.representative_dataset(
            representative_data, shapes, dtypes, num_calibration_samples, preprocess
        )
    if optimize:
        export_model, decisions = rewrite.prepare_for_export(
            model, quantization, shapes, cost_model=cost_model, calibration=dataset
        )
    function = _concrete_function(export_model, shapes, dtypes)

    if quantization == "int8":
        if dataset is None and not _has_fake_quant(function):
            raise ValueError(
                "quantization='int8' needs `representative_data` (calibration samples: arrays, a "
                "tf.data.Dataset or an image folder) unless the model is quantization-aware "
                "(fake-quant ops). Received: representative_data=None"
            )

    def make_converter():
        converter = tf.lite.TFLiteConverter.from_concrete_functions([function])
        _builtin_set(converter, quantization)
        if quantization == "int8":
            if dataset is not None:
                converter.representative_dataset = dataset
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
            # Else a QAT model: TF 2.21 rejects TFLITE_BUILTINS_INT8 without a
            # representative dataset even for fake-quant graphs (its metrics hook
            # validates before it sees the graph). The fake-quant ranges make the
            # ops int8 anyway; `_qat_float_ops` checks it below.
            io_dtype = tf.int8 if io_type == "int8" else tf.float32
            converter.inference_input_type = io_dtype
            converter.inference_output_type = io_dtype
        return converter

    try:
        tflite_model = make_converter().convert()
    except Exception as error:  # the converter raises several error types
        _fail_unconvertible(error, export_model, function=function)

    if quantization == "int8" and dataset is None:
        left = _qat_float_ops(tflite_model, io_type)
        if left:
            _fail_unconvertible(
                None,
                export_model,
                detail=(
                    f"ops {left} stayed in float: the quantization-aware model lacks fake-quant "
                    "ranges there (build it with keras_bft.quantization.quantize_model)"
                ),
            )

    if quantization == "int8" and float_ops:
        stuck = _check_float_ops(tflite_model, set(float_ops))
        if stuck:
            if quantization == "int8" and _has_fake_quant(function):
                # TF's QuantizationDebugger (the float-op path) rejects fake-quant graphs.
                raise ValueError(
                    f"Ops {stuck} came out in int8, which XNNPACK does not run, and a "
                    "quantization-aware model cannot keep them in float. Build the model "
                    "with classifier_activation=None (logits; apply softmax in the app), or "
                    "pass float_ops=() to accept them in int8 (not delegated). Received: "
                    f"float_ops={tuple(float_ops)!r}"
                )
            if dataset is None:
                raise ValueError(
                    f"Ops {stuck} came out in int8 and keeping them in float needs "
                    "`representative_data`. Received: representative_data=None"
                )
            tflite_model = _quantize_with_float_ops(make_converter(), stuck, dataset, io_type)

    histogram = graph.op_histogram(tflite_model)
    outside = [name for name in histogram if name.startswith(("CUSTOM", "DELEGATE"))]
    if outside:
        _fail_unconvertible(
            None, export_model, detail=f"non-builtin ops in the result: {outside}"
        )
    tflite_model = bytes(tflite_model)
    if output_path is not None:
        write_atomic(tflite_model, output_path, overwrite)
    if return_report:
        return tflite_model, decisions
    return tflite_model


def calibration_samples(model, data, num_samples=4, preprocess=None):
    """The first `num_samples` samples of calibration `data`, each a list of batch-1 arrays."""
    shapes = _static_input_shapes(model, 1, None)
    dtypes = _input_dtypes(model, len(shapes))
    return calibration.representative_dataset(data, shapes, dtypes, num_samples, preprocess)()


def sample_inputs(model, num_samples=4, seed=0, input_shape=None):
    """Random inputs of the model's static shape (batch 1 each), for checks and benchmarks."""
    shapes = _static_input_shapes(model, 1, input_shape)
    rng = np.random.default_rng(seed)
    return [
        [rng.uniform(-1.0, 1.0, shape).astype("float32") for shape in shapes]
        for _ in range(num_samples)
    ]
