"""Fake quantization in TFLite's int8 scheme, written with `keras.quantizers`.

`keras.quantizers.fake_quant_with_min_max_vars` lowers (TensorFlow backend) to
TF's `FakeQuantWithMinMaxVars` / `FakeQuantWithMinMaxVarsPerChannel` ops, and
`tf.lite.TFLiteConverter` reads their `[min, max]` as the quantization
parameters of the tensor they sit on. So the ranges used here *are* the int8
parameters of the converted model:

- weights: per output channel, symmetric, narrow range: int8 in `[-127, 127]`,
  zero point 0, scale `max|w| / 127` (what TFLite requires of CONV_2D and
  DEPTHWISE_CONV_2D filters);
- activations: per tensor, asymmetric, int8 in `[-128, 127]`, range learned
  as a moving average of batch min/max during training (always containing 0,
  which TFLite represents exactly).
"""

import keras
from keras import ops
from keras.quantizers import fake_quant_with_min_max_vars

NUM_BITS = 8

# A channel of zeros would get scale 0: the converter would then divide its
# int32 bias by 0. The floor keeps every scale >= 1e-4 / 127.
WEIGHT_RANGE_FLOOR = 1e-4

# Ops whose int8 output TFLite fixes (LOGISTIC, SOFTMAX: scale 1/256, zero
# point -128; TANH: 1/128, 0): the fake quant uses the same grid.
FIXED_RANGES = {
    "softmax": (0.0, 255.0 / 256.0),
    "sigmoid": (0.0, 255.0 / 256.0),
    "tanh": (-1.0, 127.0 / 128.0),
}


def check_ema_decay(ema_decay):
    """Returns `ema_decay` as a float if it is in [0, 1), else raises a ValueError naming it."""
    if isinstance(ema_decay, bool) or not isinstance(ema_decay, (int, float)) or not 0.0 <= ema_decay < 1.0:
        raise ValueError(f"`ema_decay` must be a float in [0, 1). Received: ema_decay={ema_decay!r}")
    return float(ema_decay)


def quantize_weights(kernel):
    """Per-channel symmetric int8 fake quantization along the last axis of `kernel`.

    Args:
        kernel: float tensor whose last axis is the output channel.

    Returns:
        `kernel` rounded to `scale * q`, `q` integer in `[-127, 127]`, with
        `scale = max|kernel[..., c]| / 127` (up to a factor 1 + 1e-6) per
        channel `c`. Gradients pass
        straight through (to the range's interior).
    """
    reduce_axes = tuple(range(len(kernel.shape) - 1))
    bound = ops.max(ops.abs(ops.stop_gradient(kernel)), axis=reduce_axes)
    # Widened by 1e-6 so the largest weight sits strictly inside the nudged
    # range: its straight-through gradient must not hinge on float rounding
    # (TF's eager and XLA kernels round the range differently). It still
    # rounds to +-127.
    bound = ops.maximum(bound * (1.0 + 1e-6), WEIGHT_RANGE_FLOOR)
    return fake_quant_with_min_max_vars(
        kernel, -bound, bound, num_bits=NUM_BITS, narrow_range=True, axis=-1
    )


class ActivationRange:
    """The learned `[min, max]` of one activation tensor, and its fake quantization.

    Owns three non-trainable scalar weights of `layer`: `{name}_min`,
    `{name}_max` and `{name}_updates` (how many batches have set the range).
    Before any update the range is `[-6, 6]` (tfmot's default). The first
    update takes the batch's range; later training updates move it by an
    exponential moving average with `ema_decay`; calibration updates
    (`calibrating=True`) keep the plain mean of the batches' ranges.

    Args:
        layer: the `keras.layers.Layer` that owns the weights (built now).
        name: prefix of the weight names.
        ema_decay: decay of the moving average, in `[0, 1)`.
        fixed_range: `(min, max)` for ops whose int8 output range TFLite fixes;
            then no weights are made and nothing is learned.
    """

    def __init__(self, layer, name, ema_decay, fixed_range=None):
        self.ema_decay = float(ema_decay)
        self.fixed_range = fixed_range
        if fixed_range is not None:
            return
        self.min = layer.add_weight(
            name=f"{name}_min",
            shape=(),
            initializer=keras.initializers.Constant(-6.0),
            trainable=False,
        )
        self.max = layer.add_weight(
            name=f"{name}_max",
            shape=(),
            initializer=keras.initializers.Constant(6.0),
            trainable=False,
        )
        self.updates = layer.add_weight(
            name=f"{name}_updates", shape=(), initializer="zeros", trainable=False
        )

    def variables(self):
        if self.fixed_range is not None:
            return []
        return [self.min, self.max, self.updates]

    def __call__(self, x, update=False, calibrating=False):
        """Fake-quantizes `x`; with `update`, first moves the range towards `x`'s."""
        if self.fixed_range is not None:
            low, high = self.fixed_range
            return fake_quant_with_min_max_vars(x, low, high, num_bits=NUM_BITS)
        if update:
            observed = ops.stop_gradient(ops.cast(x, "float32"))
            batch_min = ops.minimum(ops.min(observed), 0.0)
            batch_max = ops.maximum(ops.max(observed), 0.0)
            updates = ops.convert_to_tensor(self.updates)
            if calibrating:
                weight = 1.0 / (updates + 1.0)
            else:
                weight = ops.where(updates > 0.0, 1.0 - self.ema_decay, 1.0)
            low = self.min + weight * (batch_min - self.min)
            high = self.max + weight * (batch_max - self.max)
            self.min.assign(low)
            self.max.assign(high)
            self.updates.assign(updates + 1.0)
        else:
            low, high = ops.convert_to_tensor(self.min), ops.convert_to_tensor(self.max)
        # An all-zero tensor would give an empty range and scale 0.
        high = ops.maximum(high, low + 1e-6)
        return fake_quant_with_min_max_vars(x, low, high, num_bits=NUM_BITS)

