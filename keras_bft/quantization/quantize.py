"""`quantize_model`: a Keras 3 model -> its fake-quantized (QAT) twin; `calibrate`: initial ranges."""

import collections

import keras
import numpy as np

from keras_bft.applications import layers as app_layers
from keras_bft.quantization import layers as qlayers
from keras_bft.quantization import quantizers

# Ops TFLite runs on their input's int8 grid: no range of their own.
_SAME_SCALE_LAYERS = (
    keras.layers.Reshape,
    keras.layers.Flatten,
    keras.layers.Permute,
    keras.layers.Identity,
    keras.layers.MaxPooling1D,
    keras.layers.MaxPooling2D,
    keras.layers.GlobalMaxPooling1D,
    keras.layers.GlobalMaxPooling2D,
    keras.layers.ZeroPadding1D,
    keras.layers.ZeroPadding2D,
    keras.layers.Cropping1D,
    keras.layers.Cropping2D,
    keras.layers.UpSampling2D,
    app_layers.ChannelSplit,  # SPLIT / SPLIT_V
    app_layers.ChannelShuffle,  # RESHAPE + TRANSPOSE
    # Training-only noise: identities in inference (and in the TFLite model).
    keras.layers.Dropout,
    keras.layers.SpatialDropout1D,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianNoise,
    keras.layers.GaussianDropout,
    keras.layers.ActivityRegularization,
)

# Weightless ops with an int8 output of their own.
_MERGE_LAYERS = (
    keras.layers.Add,
    keras.layers.Subtract,
    keras.layers.Multiply,
    keras.layers.Average,
    keras.layers.Maximum,
    keras.layers.Minimum,
    keras.layers.Concatenate,
)
_VALUE_LAYERS = _MERGE_LAYERS + (
    keras.layers.GlobalAveragePooling1D,
    keras.layers.GlobalAveragePooling2D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    keras.layers.Activation,
    keras.layers.ReLU,
    keras.layers.LeakyReLU,
    keras.layers.ELU,
    keras.layers.Softmax,
    keras.layers.Rescaling,
)

_LINEAR_TYPES = qlayers._LINEAR_TYPES


def _activation_name(fn):
    """'linear' / 'relu' / 'relu6' for activations TFLite fuses, else None."""
    if fn is keras.activations.linear:
        return "linear"
    if fn is keras.activations.relu:
        return "relu"
    if fn is keras.activations.relu6:
        return "relu6"
    return None


def _relu_kind(layer):
    """'relu' / 'relu6' if `layer` is a ReLU that TFLite fuses into the op before it, else None."""
    if isinstance(layer, keras.layers.ReLU):
        if layer.negative_slope or layer.threshold:
            return None
        if layer.max_value is None:
            return "relu"
        return "relu6" if float(layer.max_value) == 6.0 else None
    if isinstance(layer, keras.layers.Activation):
        name = _activation_name(layer.activation)
        return name if name in ("relu", "relu6") else None
    return None


def _fixed_range(layer):
    if isinstance(layer, keras.layers.Softmax):
        return quantizers.FIXED_RANGES["softmax"]
    if isinstance(layer, keras.layers.Activation):
        for name in ("softmax", "sigmoid", "tanh"):
            if layer.activation is getattr(keras.activations, name):
                return quantizers.FIXED_RANGES[name]
    return None


def _clone(layer, **overrides):
    config = layer.get_config()
    config.update(overrides)
    return type(layer).from_config(config)


def _graph(model):
    """The model's input/output KerasTensors and its nodes in topological order."""
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model={model!r}")
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):
        inputs = outputs = None
    if not inputs or not outputs:
        raise ValueError(
            "quantize_model needs a functional or built Sequential model (one with "
            f"`inputs` and `outputs`). Received: model={model.name!r} "
            f"({type(model).__name__}) without a graph"
        )
    order, seen = [], set()
    for output in outputs:
        stack = [(output, False)]
        while stack:
            tensor, expanded = stack.pop()
            operation, node_index, _ = tensor._keras_history
            node = operation._inbound_nodes[node_index]
            if id(node) in seen:
                continue
            if expanded or node.is_input:
                seen.add(id(node))
                order.append(node)
                continue
            stack.append((tensor, True))
            for parent in reversed(node.input_tensors):
                stack.append((parent, False))
    return inputs, outputs, order


def quantize_model(model, calibration_data=None, ema_decay=0.99):
    """Returns a trainable, fake-quantized copy of `model` that converts to an int8 TFLite model.

    The Keras 3 counterpart of `tfmot.quantization.keras.quantize_model`
    (which rejects Keras 3 models). The copy runs TFLite's int8 scheme in
    float: per-channel symmetric int8 weights, per-tensor asymmetric int8
    activations whose ranges it learns as moving averages while you train
    it (quantization-aware training), batch norms folded into the conv,
    depthwise, dense or butterfly layer before them, and ReLU/ReLU6 fused
    into the op before them, as the converter will. After training,
    `tf.lite.TFLiteConverter` with `optimizations=[tf.lite.Optimize.DEFAULT]`
    (or `keras_bft.tflite.convert(model, quantization="int8")`) needs no
    representative dataset: the ranges are in the model.

    Supported layers: `ButterflyFusion`, `Conv2D`, `DepthwiseConv2D`,
    `Dense` (each optionally followed by `BatchNormalization` and a ReLU);
    `Add`, `Subtract`, `Multiply`, `Average`, `Maximum`, `Minimum`,
    `Concatenate` (optionally followed by a ReLU); pooling, activation,
    softmax, reshaping and dropout layers. A `BatchNormalization` that does not
    follow one of the linear layers, a layer used at several places, nested
    models and other layers raise a `ValueError` naming the layer.

    Args:
        model: a functional or built `keras.Sequential` float model.
        calibration_data: optional inputs (array, or iterable of batches `x`
            or `(x, y)`) to set the initial activation ranges from, in
            inference mode (see `calibrate`). Without it the first training
            batch sets them.
        ema_decay: decay of the moving averages of activation ranges.

    Returns:
        A new `keras.Model` (the float model is unchanged), with the float
        model's weights, ready for `compile` and `fit`.

    Example:

    >>> inputs = keras.Input((8, 8, 16))
    >>> x = keras.layers.Conv2D(16, 1, use_bias=False)(inputs)
    >>> x = keras.layers.BatchNormalization()(x)
    >>> x = keras.layers.ReLU()(x)
    >>> model = keras.Model(inputs, keras_bft.ButterflyFusion(16)(x))
    >>> qat_model = quantize_model(model)
    >>> [type(layer).__name__ for layer in qat_model.layers]
    ['InputLayer', 'ActivationQuantizer', 'QuantizedLinear', 'QuantizedLinear']
    """
    ema_decay = qlayers._check_ema_decay(ema_decay)
    inputs, outputs, order = _graph(model)
    consumers = collections.defaultdict(list)
    for node in order:
        for tensor in node.input_tensors:
            consumers[id(tensor)].append(node)
    output_ids = {id(t) for t in outputs}
    # Nodes of this graph only: cloning the model elsewhere adds nodes to its layers.
    calls = collections.Counter(id(node.operation) for node in order)

    def sole_consumer(tensor):
        users = consumers[id(tensor)]
        if id(tensor) in output_ids or len(users) != 1:
            return None
        return users[0]

    def feeds_concat_only(tensor):
        user = sole_consumer(tensor)
        return user is not None and isinstance(user.operation, keras.layers.Concatenate)

    tensor_map, new_inputs, absorbed, weight_copies = {}, [], set(), []
    for tensor in inputs:
        input_layer = tensor._keras_history[0]
        new = keras.Input(
            batch_shape=tensor.shape, dtype=tensor.dtype, name=input_layer.name
        )
        new_inputs.append(new)
        tensor_map[id(tensor)] = qlayers.ActivationQuantizer(
            ema_decay=ema_decay, name=f"quantize_{input_layer.name}"
        )(new)

    for node in order:
        if node.is_input or id(node) in absorbed:
            continue
        layer = node.operation
        if calls[id(layer)] > 1 and layer.weights:
            raise ValueError(
                f"quantize_model does not support shared layers. Received: layer {layer.name!r} "
                f"({type(layer).__name__}) called {calls[id(layer)]} times in the model"
            )
        args, kwargs = node.arguments.fill_in(tensor_map)
        end = node
        if isinstance(layer, _LINEAR_TYPES):
            activation = _activation_name(layer.activation)
            batch_norm = None
            if activation == "linear":
                user = sole_consumer(end.outputs[0])
                if user is not None and isinstance(user.operation, keras.layers.BatchNormalization):
                    batch_norm, end = user.operation, user
                    absorbed.add(id(user))
                user = sole_consumer(end.outputs[0])
                if user is not None and _relu_kind(user.operation):
                    activation, end = _relu_kind(user.operation), user
                    absorbed.add(id(user))
            separate_activation = None if activation is not None else layer.activation
            inner = _clone(layer, activation="linear")
            inner_bn = None if batch_norm is None else _clone(batch_norm)
            wrapper = qlayers.QuantizedLinear(
                inner,
                batch_norm=inner_bn,
                activation=activation or "linear",
                quantize_output=separate_activation is not None or not feeds_concat_only(end.outputs[0]),
                ema_decay=ema_decay,
                name=f"quant_{layer.name}",
            )
            result = wrapper(args[0])
            weight_copies.append((inner, layer))
            if batch_norm is not None:
                weight_copies.append((inner_bn, batch_norm))
            if separate_activation is not None:
                act = keras.layers.Activation(separate_activation, name=f"{layer.name}_activation")
                result = qlayers.QuantizedOp(
                    act,
                    fixed_range=_fixed_range(act),
                    quantize_output=not feeds_concat_only(end.outputs[0]),
                    ema_decay=ema_decay,
                    name=f"quant_{layer.name}_activation",
                )(result)
        elif isinstance(layer, _SAME_SCALE_LAYERS) or (
            isinstance(layer, keras.layers.Activation) and _activation_name(layer.activation) == "linear"
        ):
            result = _clone(layer)(*args, **kwargs)
        elif isinstance(layer, _VALUE_LAYERS):
            activation = "linear"
            if isinstance(layer, _MERGE_LAYERS):
                user = sole_consumer(end.outputs[0])
                if user is not None and _relu_kind(user.operation):
                    activation, end = _relu_kind(user.operation), user
                    absorbed.add(id(user))
            inner = _clone(layer)
            result = qlayers.QuantizedOp(
                inner,
                activation=activation,
                fixed_range=_fixed_range(layer),
                quantize_output=not feeds_concat_only(end.outputs[0]),
                ema_decay=ema_decay,
                name=f"quant_{layer.name}",
            )(args[0])
        elif isinstance(layer, keras.layers.BatchNormalization):
            raise ValueError(
                "quantize_model folds a BatchNormalization only into the Conv2D, "
                "DepthwiseConv2D, Dense or ButterflyFusion (with linear activation) "
                f"right before it. Received: layer {layer.name!r} after "
                f"{node.input_tensors[0]._keras_history[0].name!r}"
            )
        else:
            raise ValueError(
                f"quantize_model does not support layer {layer.name!r} of type "
                f"{type(layer).__name__}. Supported: ButterflyFusion, Conv2D, DepthwiseConv2D, "
                "Dense (+ BatchNormalization, ReLU), merge, pooling, activation, reshaping and "
                "dropout layers"
            )
        results = result if isinstance(result, (list, tuple)) else [result]
        for old, new in zip(end.outputs, results):
            tensor_map[id(old)] = new

    new_outputs = keras.tree.pack_sequence_as(
        model._outputs_struct if hasattr(model, "_outputs_struct") else outputs,
        [tensor_map[id(t)] for t in outputs],
    )
    if len(new_inputs) == 1:
        new_inputs = new_inputs[0]
    qat_model = keras.Model(new_inputs, new_outputs, name=model.name)
    for new_layer, old_layer in weight_copies:
        new_layer.set_weights(old_layer.get_weights())
    if calibration_data is not None:
        calibrate(qat_model, calibration_data)
    return qat_model


def _range_owners(model):
    return [
        layer
        for layer in model._flatten_layers(include_self=False, recursive=True)
        if isinstance(layer, (qlayers.ActivationQuantizer, qlayers._QuantizedBase))
    ]


def calibrate(model, data, batch_size=64, steps=None):
    """Sets the activation ranges of a `quantize_model` model from `data`, in inference mode.

    Each range becomes the mean over the batches of the batch's [min, max]
    (always containing 0), computed with the folded (moving-statistics)
    weights the converted model will use. Weights and batch norm statistics
    are not changed. Useful before fine-tuning, and on its own as a
    post-training quantization whose ranges are plain Keras weights.

    Args:
        model: a model returned by `quantize_model`.
        data: a NumPy array (split into batches of `batch_size`) or an
            iterable of batches `x` or `(x, y, ...)`, e.g. a `tf.data.Dataset`.
        batch_size: batch size for array data.
        steps: optional number of batches to use.

    Returns:
        `model`, calibrated.
    """
    owners = _range_owners(model)
    if not owners:
        raise ValueError(
            "`model` has no activation ranges: pass a model returned by quantize_model. "
            f"Received: model={getattr(model, 'name', model)!r}"
        )
    if steps is not None and (not isinstance(steps, int) or steps < 1):
        raise ValueError(f"`steps` must be a positive integer. Received: steps={steps!r}")
    if isinstance(data, np.ndarray):
        batches = (data[i : i + batch_size] for i in range(0, len(data), batch_size))
    else:
        batches = iter(data)
    for layer in owners:
        for variable in layer.weights:
            if variable.path.endswith("_updates"):
                variable.assign(0.0)
        layer._calibrating = True
    used = 0
    try:
        for batch in batches:
            if steps is not None and used >= steps:
                break
            x = batch[0] if isinstance(batch, tuple) else batch
            model(x, training=False)
            used += 1
    finally:
        for layer in owners:
            layer._calibrating = False
    if not used:
        raise ValueError("`data` gave no batches to calibrate with.")
    return model
