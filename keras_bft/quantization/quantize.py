"""`quantize_model`: a Keras 3 model -> its fake-quantized (QAT) twin; `calibrate`: initial ranges.

`quantize_model` runs three named steps over the model's layer graph
(`keras_bft.utils.LayerGraph`):

1. `fusion_groups`: groups the layer calls the way TFLite fuses them into
   int8 ops (a conv, depthwise, dense or butterfly with the batch norm and
   ReLU after it; a merge op with its ReLU; ops that keep their input's grid);
2. the export forms: each ButterflyFusion gets the form the exporter will give
   it (`keras_bft.tflite.plan_lowering`: a dense fold or merged stages, for
   the export input shape and objective), so the fake quants sit on the
   tensors of the int8 file the model will become;
3. the rebuild: each group becomes the quantized layer that `QUANTIZERS`
   registers for its kind. A new scheme (int4 weights, float16 activations)
   registers its own builders with `register_quantizer`.
"""

import dataclasses
import warnings

import keras
import numpy as np

from keras_bft.layers.butterfly_fusion import ButterflyFusion
from keras_bft.layers.channel import ChannelShuffle
from keras_bft.layers.channel import ChannelSplit
from keras_bft.quantization import layers as qlayers
from keras_bft.quantization import quantizers
from keras_bft.utils.layer_graph import LayerGraph

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
    ChannelSplit,  # SPLIT / SPLIT_V
    ChannelShuffle,  # RESHAPE + TRANSPOSE
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


# ------------------------------------------------------------------ step 1: fusion groups


@dataclasses.dataclass(frozen=True, eq=False)
class FusionGroup:
    """Consecutive layer calls that become one int8 op in TFLite, and how to quantize them.

    Attributes:
        kind: the key of its builder in `QUANTIZERS`: `"linear"` (Conv2D,
            DepthwiseConv2D, Dense or ButterflyFusion, with its batch norm
            and ReLU), `"value"` (a weightless op with an int8 output of its
            own, with a merge op's ReLU) or `"same_scale"` (runs on its
            input's grid).
        calls: the op's call first, then the absorbed BatchNormalization /
            ReLU calls (a `LayerGraph` step).
        activation: the activation fused into the op: `"linear"`, `"relu"`,
            `"relu6"`, or None for a linear layer whose own activation TFLite
            does not fuse (it then runs as a separate op).
        batch_norm: the folded BatchNormalization layer, if any.
        quantize_output: False where the only consumer is a CONCATENATION
            (which gives the tensor its own range).
    """

    kind: str
    calls: tuple
    activation: object = "linear"
    batch_norm: object = None
    quantize_output: bool = True

    @property
    def layer(self):
        return self.calls[0].layer


def _feeds_concat_only(graph, tensor):
    user = graph.sole_consumer(tensor)
    return user is not None and isinstance(user.layer, keras.layers.Concatenate)


def _absorb_relu(graph, calls):
    """`calls` extended by the ReLU that TFLite fuses into the op, and that ReLU's kind."""
    user = graph.sole_consumer(calls[-1].outputs[0])
    if user is not None and _relu_kind(user.layer):
        return calls + (user,), _relu_kind(user.layer)
    return calls, "linear"


def _linear_group(graph, call):
    activation = _activation_name(call.layer.activation)
    calls, batch_norm = (call,), None
    if activation == "linear":
        user = graph.sole_consumer(call.outputs[0])
        if user is not None and isinstance(user.layer, keras.layers.BatchNormalization):
            calls, batch_norm = calls + (user,), user.layer
        calls, activation = _absorb_relu(graph, calls)
    # A non-fused activation runs as its own op, which quantizes its own output.
    quantize_output = activation is None or not _feeds_concat_only(graph, calls[-1].outputs[0])
    return FusionGroup("linear", calls, activation, batch_norm, quantize_output)


def fusion_groups(graph):
    """Groups the calls of `graph` into `FusionGroup`s, in execution order.

    Args:
        graph: the float model's `LayerGraph`.

    Returns:
        A list of `FusionGroup`s covering every call.

    Raises:
        ValueError: naming the layer, for a shared layer with weights, a
            BatchNormalization that no linear layer precedes, or a layer type
            without an int8 form here.
    """
    groups, absorbed = [], set()
    for call in graph.calls:
        if id(call) in absorbed:
            continue
        layer = call.layer
        if graph.times_called(layer) > 1 and layer.weights:
            raise ValueError(
                f"quantize_model does not support shared layers. Received: layer {layer.name!r} "
                f"({type(layer).__name__}) called {graph.times_called(layer)} times in the model"
            )
        if isinstance(layer, qlayers.LINEAR_TYPES):
            group = _linear_group(graph, call)
        elif isinstance(layer, _SAME_SCALE_LAYERS) or (
            isinstance(layer, keras.layers.Activation) and _activation_name(layer.activation) == "linear"
        ):
            group = FusionGroup("same_scale", (call,))
        elif isinstance(layer, _VALUE_LAYERS):
            calls, activation = (call,), "linear"
            if isinstance(layer, _MERGE_LAYERS):
                calls, activation = _absorb_relu(graph, calls)
            group = FusionGroup(
                "value", calls, activation,
                quantize_output=not _feeds_concat_only(graph, calls[-1].outputs[0]),
            )
        elif isinstance(layer, keras.layers.BatchNormalization):
            producer = graph.producer(call.inputs[0])
            source = "the model input" if producer is None else producer.layer.name
            raise ValueError(
                "quantize_model folds a BatchNormalization only into the Conv2D, "
                "DepthwiseConv2D, Dense or ButterflyFusion (with linear activation) "
                f"right before it. Received: layer {layer.name!r} after {source!r}"
            )
        else:
            raise ValueError(
                f"quantize_model does not support layer {layer.name!r} of type "
                f"{type(layer).__name__}. Supported: ButterflyFusion, Conv2D, DepthwiseConv2D, "
                "Dense (+ BatchNormalization, ReLU), merge, pooling, activation, reshaping and "
                "dropout layers"
            )
        absorbed.update(id(c) for c in group.calls)
        groups.append(group)
    return groups


# ------------------------------------------------------------------ step 2: export forms


def _export_forms(model, graph, input_shape, objective, lowering):
    """`{layer name: search.Decision}` for the model's butterflies (empty: keep them as trained)."""
    if lowering is not None:
        return {decision.layer: decision for decision in lowering}
    if objective is None:
        return {}
    from keras_bft.tflite import rewrite  # the exporter's search; imported only when needed

    if input_shape is not None:
        shapes = [input_shape] if not isinstance(input_shape[0], (list, tuple)) else list(input_shape)
        shapes = [(1, *tuple(shape)) for shape in shapes]
    else:
        shapes = [(1, *tuple(t.shape)[1:]) for t in graph.inputs]
    if any(d is None for shape in shapes for d in shape):
        if any(isinstance(call.layer, ButterflyFusion) for call in graph.calls):
            warnings.warn(
                "quantize_model keeps every ButterflyFusion as trained: the model's input shape "
                f"{shapes} is not static, so the export forms cannot be chosen; pass `input_shape` "
                "(without batch) to quantize for the export's forms.",
                stacklevel=3,
            )
        return {}
    report = rewrite.plan_lowering(model, "int8", shapes, objective)
    return {decision.layer: decision for decision in report}


# ------------------------------------------------------------------ step 3: quantized layers


@dataclasses.dataclass
class QuantizeContext:
    """What every builder of `QUANTIZERS` shares while `quantize_model` runs.

    Attributes:
        ema_decay: decay of the moving averages of activation ranges.
        forms: `{layer name: search.Decision}`: the export form of each butterfly.
        weight_copies: `(new layer, float layer)` pairs whose weights are
            copied once the model is built.
    """

    ema_decay: float
    forms: dict
    weight_copies: list = dataclasses.field(default_factory=list)


QUANTIZERS = {}


def register_quantizer(kind):
    """Registers `builder(group, args, kwargs, context) -> outputs` for `FusionGroup`s of `kind`."""

    def decorate(builder):
        QUANTIZERS[kind] = builder
        return builder

    return decorate


def _butterfly_in_export_form(layer, decision):
    """A clone of a ButterflyFusion computing its exported form: a dense fold or merged stages."""
    if decision.kind == "dense":
        return _clone(layer, activation="linear", lowering="dense", merge_stages=None)
    merge = list(decision.merge_stages) if len(decision.merge_stages) < layer.plan.num_stages else None
    lowering = "auto" if layer.lowering == "dense" else layer.lowering
    return _clone(layer, activation="linear", lowering=lowering, merge_stages=merge)


@register_quantizer("linear")
def quantize_linear(group, args, kwargs, context):
    """A QuantizedLinear (batch norm folded, ReLU fused), and a QuantizedOp for an activation TFLite does not fuse."""
    layer = group.layer
    if isinstance(layer, ButterflyFusion) and layer.name in context.forms:
        inner = _butterfly_in_export_form(layer, context.forms[layer.name])
    else:
        inner = _clone(layer, activation="linear")
    inner_bn = None if group.batch_norm is None else _clone(group.batch_norm)
    result = qlayers.QuantizedLinear(
        inner,
        batch_norm=inner_bn,
        activation=group.activation or "linear",
        quantize_output=group.quantize_output,
        ema_decay=context.ema_decay,
        name=f"quant_{layer.name}",
    )(args[0])
    context.weight_copies.append((inner, layer))
    if group.batch_norm is not None:
        context.weight_copies.append((inner_bn, group.batch_norm))
    if group.activation is None:
        act = keras.layers.Activation(layer.activation, name=f"{layer.name}_activation")
        result = qlayers.QuantizedOp(
            act,
            fixed_range=_fixed_range(act),
            quantize_output=group.quantize_output,
            ema_decay=context.ema_decay,
            name=f"quant_{layer.name}_activation",
        )(result)
    return result


@register_quantizer("same_scale")
def quantize_same_scale(group, args, kwargs, context):
    """The layer itself (a clone): TFLite runs it on its input's int8 grid."""
    return _clone(group.layer)(*args, **kwargs)


@register_quantizer("value")
def quantize_value(group, args, kwargs, context):
    """A QuantizedOp: the op, its fused ReLU, its own output range."""
    return qlayers.QuantizedOp(
        _clone(group.layer),
        activation=group.activation,
        fixed_range=_fixed_range(group.layer),
        quantize_output=group.quantize_output,
        ema_decay=context.ema_decay,
        name=f"quant_{group.layer.name}",
    )(args[0])


def quantize_model(
    model,
    calibration_data=None,
    ema_decay=0.99,
    input_shape=None,
    objective="latency",
    lowering=None,
):
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

    Each ButterflyFusion is quantized in the form the exporter gives it
    (`keras_bft.tflite.convert(float_model, "int8", objective=...)` at the
    same input shape): a dense fold trains the butterfly's stage weights
    through the fake-quantized dense matrix, merged stages through their
    merged kernels. So the int8 file of the QAT model and the PTQ file of the
    float model have the same forms, and the fake quants sit on the tensors of
    that file.

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
        input_shape: the input shape (without batch; a list for several
            inputs) the int8 model will be exported at; default the model's.
        objective: the export objective the butterflies' forms are chosen
            for (`"latency"`, `"size"`, `"balanced"`, as in `convert`), or
            None to keep every butterfly in its trained form.
        lowering: optional `LoweringReport` (e.g. `convert(...).report` or
            `keras_bft.tflite.plan_lowering`) whose
            forms to use instead of choosing them here.

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
    ema_decay = quantizers.check_ema_decay(ema_decay)
    graph = LayerGraph(model, caller="quantize_model")
    groups = fusion_groups(graph)
    context = QuantizeContext(ema_decay, _export_forms(model, graph, input_shape, objective, lowering))

    def quantize_inputs(inputs):
        return [
            qlayers.ActivationQuantizer(ema_decay=ema_decay, name=f"quantize_{layer.name}")(tensor)
            for tensor, layer in zip(inputs, graph.input_layers)
        ]

    def build(group, args, kwargs):
        return QUANTIZERS[group.kind](group, args, kwargs, context)

    qat_model = graph.rebuild(build, steps=groups, feed=quantize_inputs)
    for new_layer, old_layer in context.weight_copies:
        new_layer.set_weights(old_layer.get_weights())
    if calibration_data is not None:
        calibrate(qat_model, calibration_data)
    return qat_model


def _range_owners(model):
    return [
        layer
        for layer in model.layers
        if isinstance(layer, (qlayers.ActivationQuantizer, qlayers.QuantizedWrapper))
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
        layer.calibrating = True
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
            layer.calibrating = False
    if not used:
        raise ValueError("`data` gave no batches to calibrate with.")
    return model
