"""The layers an exported model is made of where it differs from the Keras model.

Each computes exactly the function of the layer it stands for, in ops that
LiteRT's XNNPACK delegate runs (int8 included):

- `ButterflyStages`: a ButterflyFusion's stages (merged or not) as grouped 1x1
  convs + shuffles, with the stage kernels stored as weights;
- `dense_fold`: a ButterflyFusion as one 1x1 `Conv2D` (or `Dense`);
- `HardSwishAsProduct`: hard-swish without HARD_SWISH (no int8 kernel);
- `SplitAsBuiltin`: a two-way channel split without SPLIT_V (not delegated);
- `Borrowed`: any other layer, run with its own weights in the new model
  without adding a call to the caller's model.
"""

import keras
import numpy as np
from keras import ops

from keras_bft.layers.butterfly_fusion import fuse_channels
from keras_bft.ops import activations
from keras_bft.ops import lowering as lowering_lib
from keras_bft.ops import plans


@keras.saving.register_keras_serializable(package="keras_bft")
class ButterflyStages(keras.layers.Layer):
    """Export form of a ButterflyFusion: stage kernels of any plan (e.g. merged), stored as weights.

    The exporter computes merged kernels on the weight side (NumPy) so the
    converter sees plain constants: merging at trace time leaves einsums on
    constants that TFLite's constant folding skips when large, and the int8
    quantizer then treats the conv filters as activations.

    Args:
        stages: `(groups, group_in, group_out)` per stage.
        in_channels: channels read (before zero-padding).
        out_channels: channels written (after cropping).
        residual, use_bias, activation, data_format: as in ButterflyFusion.
        lowering: one of `keras_bft.ops.LOWERINGS` except `"dense"`.
    """

    def __init__(
        self,
        stages,
        in_channels,
        out_channels,
        residual=True,
        use_bias=False,
        activation=None,
        data_format="channels_last",
        lowering="grouped_conv",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.stages = [tuple(int(v) for v in s) for s in stages]
        self.plan = plans.ButterflyPlan(
            int(in_channels), int(out_channels), tuple(plans.Stage(*s) for s in self.stages)
        )
        self.residual = bool(residual)
        self.use_bias = bool(use_bias)
        self.activation = keras.activations.get(activation)
        self.data_format = data_format
        if lowering not in lowering_lib.LOWERINGS or lowering == "dense":
            raise ValueError(
                f"`lowering` must be a staged lowering of {lowering_lib.LOWERINGS}. "
                f"Received: lowering={lowering!r}"
            )
        self.lowering = lowering

    def build(self, input_shape):
        self.kernels = [
            self.add_weight(name=f"stage_{i}_kernel", shape=s.kernel_shape, initializer="zeros")
            for i, s in enumerate(self.plan.stages)
        ]
        self.bias = (
            self.add_weight(name="bias", shape=(self.plan.out_channels,), initializer="zeros")
            if self.use_bias
            else None
        )

    def call(self, inputs):
        channels_first = self.data_format == "channels_first" and len(inputs.shape) >= 3
        return fuse_channels(
            inputs, list(self.kernels), self.plan, self.residual, self.lowering,
            self.bias, self.activation, channels_first,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "stages": self.stages,
                "in_channels": self.plan.in_channels,
                "out_channels": self.plan.out_channels,
                "residual": self.residual,
                "use_bias": self.use_bias,
                "activation": keras.activations.serialize(self.activation),
                "data_format": self.data_format,
                "lowering": self.lowering,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_bft")
class HardSwishAsProduct(keras.layers.Layer):
    """Hard-swish as MUL, ADD (+RELU6), MUL: `keras_bft.ops.activations.hard_swish`.

    LiteRT's XNNPACK delegate lacks int8 HARD_SWISH, and the converter folds
    `x * relu6(x + 3) / 6` back into it; see `keras_bft.ops.activations`.
    """

    def call(self, inputs):
        return activations.hard_swish(inputs)


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
    kernels = [np.asarray(ops.convert_to_numpy(k), dtype=np.float64) for k in layer.kernels]
    merged, plan = lowering_lib.merge_kernels(kernels, layer.plan, tuple(merge_stages))
    new = ButterflyStages(
        [s.kernel_shape for s in plan.stages],
        plan.in_channels,
        plan.out_channels,
        residual=layer.residual,
        use_bias=layer.use_bias,
        activation=layer.activation,
        data_format=layer.data_format,
        lowering=lowering,
        name=layer.name,
        dtype=layer.dtype_policy,
    )
    new.build(None)
    weights = [np.asarray(ops.convert_to_numpy(k), dtype=np.float32) for k in merged]
    if layer.use_bias:
        weights.append(ops.convert_to_numpy(layer.bias))
    new.set_weights(weights)
    return new


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
