"""The layers an exported model is made of where it differs from the Keras model.

Each computes exactly the function of the layer it stands for, in ops that
LiteRT's XNNPACK delegate runs (int8 included):

- `ButterflyStages`: a ButterflyFusion's stages (merged or not) as grouped 1x1
  convs + shuffles, with the stage kernels stored as weights;
- `dense_fold`: a ButterflyFusion as one 1x1 `Conv2D` (or `Dense`);
- `HardSwishAsProduct`: hard-swish without HARD_SWISH (no int8 kernel);
- `SplitAsBuiltin`: a two-way channel split without SPLIT_V (not delegated);
- `Borrowed`: any other layer, run with its own weights in the new model
  without adding a call to the caller's model;
- `frozen_quantized_fusion`: a quantization-aware butterfly in a dense or
  merged form with that form's kernels computed in NumPy (the converter does
  not constant-fold them when they are computed in the graph).
"""

import keras
from keras import ops

from keras_bft.layers.butterfly_stages import ButterflyStages
from keras_bft.ops import activations


# XNNPACK's int8 ADD needs input scale / output scale >= 2**-10 (xnnpack_delegate.cc). The output range of
# hard-swish's `x + 3` holds 3, so an `x` whose calibrated values all lie within 3 / 1024 of zero makes XNNPACK
# reject that ADD (untrained MobileNetV3s: BatchNorm at its initial statistics shrinks activations to ~1e-9).
HARD_SWISH_LINEAR_BELOW = 3.0 / 1024


@keras.saving.register_keras_serializable(package="keras_bft")
class HardSwishAsProduct(keras.layers.Layer):
    """Hard-swish as MUL, ADD (+RELU6), MUL: `keras_bft.ops.activations.hard_swish`.

    LiteRT's XNNPACK delegate lacks int8 HARD_SWISH, and the converter folds
    `x * relu6(x + 3) / 6` back into it; see `keras_bft.ops.activations`.

    `linear=True` computes `x / 2`, for an input whose calibrated values stay
    within `HARD_SWISH_LINEAR_BELOW` of zero: there int8 cannot resolve `x`
    next to 3 (`x + 3` quantizes to 3), and `hard_swish(x) = x / 2 + x**2 / 6`
    differs from `x / 2` by under 0.13 of the output's int8 step, while
    XNNPACK would reject the ADD. Only for int8 export.
    """

    def __init__(self, linear=False, **kwargs):
        super().__init__(**kwargs)
        self.linear = bool(linear)

    def call(self, inputs):
        if self.linear:
            return inputs * 0.5
        return activations.hard_swish(inputs)

    def get_config(self):
        config = super().get_config()
        config["linear"] = self.linear
        return config


@keras.saving.register_keras_serializable(package="keras_bft")
class SplitAsBuiltin(keras.layers.Layer):
    """A two-way channel split without SPLIT_V, which LiteRT's XNNPACK delegate lacks.

    Equal halves become one SPLIT, other sizes two strided slices; both are
    delegated (fp32 and int8, checked by the tests).

    Args:
        axis: the channel axis.
        first: channels in the first part.
    """

    def __init__(self, axis, first, **kwargs):
        super().__init__(**kwargs)
        self.axis = int(axis)
        self.first = int(first)

    def call(self, inputs):
        axis = self.axis % len(inputs.shape)
        channels = inputs.shape[axis]
        if 2 * self.first == channels:
            return list(ops.split(inputs, 2, axis=axis))
        starts = [0] * len(inputs.shape)
        sizes = list(inputs.shape)
        sizes[0] = -1 if sizes[0] is None else sizes[0]
        left_sizes, right_sizes, right_starts = list(sizes), list(sizes), list(starts)
        left_sizes[axis] = self.first
        right_sizes[axis] = channels - self.first
        right_starts[axis] = self.first
        return [ops.slice(inputs, starts, left_sizes), ops.slice(inputs, right_starts, right_sizes)]

    def compute_output_shape(self, input_shape):
        axis = self.axis % len(input_shape)
        left, right = list(input_shape), list(input_shape)
        left[axis], right[axis] = self.first, input_shape[axis] - self.first
        return [tuple(left), tuple(right)]

    def get_config(self):
        config = super().get_config()
        config.update({"axis": self.axis, "first": self.first})
        return config


def dense_fold(layer, shape):
    """`layer` (a built ButterflyFusion) as one 1x1 `Conv2D` (`Dense` for channels-last non-image inputs).

    The kernel is `layer.dense_kernel()` (residual included). Returns None when
    no such layer takes an input of `shape` (channels-first images).
    """
    kernel = layer.dense_kernel()
    weights = [kernel]
    if layer.use_bias:
        weights.append(ops.convert_to_numpy(layer.bias))
    common = dict(
        use_bias=layer.use_bias,
        activation=layer.activation,
        name=layer.name,
        dtype=layer.dtype_policy,
    )
    if len(shape) == 4 and layer.data_format == "channels_last":
        new = keras.layers.Conv2D(layer.filters, 1, **common)
        weights[0] = kernel.reshape(1, 1, *kernel.shape)
    elif layer.channel_axis(len(shape)) == -1:
        new = keras.layers.Dense(layer.filters, **common)
    else:
        return None
    new.build(shape)
    new.set_weights(weights)
    return new


def staged_export_layer(layer, merge_stages, lowering="grouped_conv"):
    """A `ButterflyStages` computing `layer` with its stages merged by `merge_stages` (weights merged in NumPy)."""
    return ButterflyStages.from_fusion(layer, merge_stages, lowering)


@keras.saving.register_keras_serializable(package="keras_bft")
class Borrowed(keras.layers.Wrapper):
    """Runs `layer` (its weights, its function) as a layer of another model.

    Calling a layer on new symbolic inputs records the call in the layer (a
    new inbound node), which would change the caller's model (`layer.input`
    and `layer.output` then become ambiguous). A `Borrowed` records the call
    in itself instead: Keras computes its output by running `layer` on
    placeholder tensors, which records nothing.

    Args:
        layer: the layer to run.
        **kwargs: base layer arguments (`name`, `dtype`, ...).
    """

    def call(self, *args, training=None, **kwargs):
        return self.layer(*args, training=training, **kwargs)

    def compute_output_spec(self, *args, **kwargs):
        kwargs.pop("training", None)
        return self.layer.compute_output_spec(*args, **kwargs)


def frozen_quantized_fusion(qlayer, input_shape):
    """A built copy of a `QuantizedLinear` butterfly whose dense or merged kernels are weights.

    Same function, same ranges, same batch norm: only the weight-side work
    (`dense_kernel()`, merged stage kernels) is done here in NumPy.

    Args:
        qlayer: a built `QuantizedLinear` wrapping a ButterflyFusion in a dense
            (`lowering="dense"`) or merged (`merge_stages`) form.
        input_shape: its input shape (batch first).

    Returns:
        A built `QuantizedLinear` wrapping a 1x1 `Conv2D` (`Dense`) or a
        `ButterflyStages`, or None for unmerged stages (nothing to freeze).
    """
    from keras_bft.quantization import QuantizedLinear

    layer = qlayer.layer
    if layer.lowering == "dense":
        inner = dense_fold(layer, input_shape)
    elif layer.merge_stages is not None:
        inner = staged_export_layer(layer, layer.merge_stages)
    else:
        return None
    batch_norm = qlayer.batch_norm
    new_bn = None if batch_norm is None else batch_norm.__class__.from_config(batch_norm.get_config())
    new = QuantizedLinear(
        inner,
        batch_norm=new_bn,
        activation=qlayer.activation,
        quantize_output=qlayer.quantize_output,
        ema_decay=qlayer.ema_decay,
        name=qlayer.name,
    )
    new.build(input_shape)
    if new_bn is not None:
        new_bn.set_weights(batch_norm.get_weights())
    ranges = {v.name: v for v in qlayer.weights if v.name.endswith(("_min", "_max", "_updates"))}
    for variable in new.weights:
        if variable.name in ranges:
            variable.assign(ranges[variable.name])
    return new
