"""Fake-quantized layers that `quantize_model` builds: each runs the ops of its int8 TFLite graph.

Every layer puts a fake quant exactly where the converted model has an int8
tensor, and nowhere else: after a conv and its folded batch norm and fused
ReLU (TFLite fuses all three into one CONV_2D), after an ADD (with its fused
ReLU), after each butterfly stage (a grouped CONV_2D each), and on the model's
inputs. Ops that TFLite runs on their input's grid (RESHAPE, TRANSPOSE,
MAX_POOL_2D, PAD, ...) get none.
"""

import keras
from keras import ops

from keras_bft.layers.butterfly_fusion import ButterflyFusion
from keras_bft.layers.butterfly_stages import ButterflyStages
from keras_bft.ops import activations
from keras_bft.ops import lowering as lowering_lib
from keras_bft.quantization import quantizers

_FUSED_ACTIVATIONS = ("linear", "relu", "relu6")

# The layers QuantizedLinear wraps (their batch norm folded, their kernel fake-quantized).
LINEAR_TYPES = (
    keras.layers.Conv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Dense,
    ButterflyFusion,
    ButterflyStages,
)
_BUTTERFLIES = (ButterflyFusion, ButterflyStages)


def _apply_activation(x, activation):
    if activation == "relu":
        return ops.relu(x)
    if activation == "relu6":
        return ops.relu6(x)
    return x


def _check_fused_activation(activation):
    activation = "linear" if activation is None else activation
    if activation not in _FUSED_ACTIVATIONS:
        raise ValueError(
            f"`activation` must be one of {_FUSED_ACTIVATIONS} (the activations TFLite fuses "
            f"into the op before it). Received: activation={activation!r}"
        )
    return activation


class QuantizedWrapper(keras.layers.Wrapper):
    """Base of the layers that run a layer with int8 fake quantization and learn activation ranges.

    Attributes:
        ema_decay: decay of the moving averages of the ranges.
        calibrating: while True, inference calls set the ranges to the mean of
            the batches' ranges (`keras_bft.quantization.calibrate` sets it).
    """

    def __init__(self, layer, ema_decay=0.99, **kwargs):
        super().__init__(layer, **kwargs)
        self.ema_decay = quantizers.check_ema_decay(ema_decay)
        self.calibrating = False

    def _range(self, name, fixed_range=None):
        return quantizers.ActivationRange(self, name, self.ema_decay, fixed_range)

    def get_config(self):
        config = super().get_config()
        config["ema_decay"] = self.ema_decay
        return config


@keras.saving.register_keras_serializable(package="keras_bft")
class ActivationQuantizer(keras.layers.Layer):
    """Fake-quantizes a tensor per-tensor, asymmetric int8, with a learned range.

    `quantize_model` puts one on each model input (the input QUANTIZE of the
    int8 TFLite model takes its parameters from it). Usable on its own.

    Args:
        ema_decay: decay of the moving average of batch min/max in training.
        fixed_range: optional `(min, max)` to use instead of a learned range.
        **kwargs: base layer arguments (`name`, ...).

    Example:

    >>> q = ActivationQuantizer()
    >>> y = q(np.linspace(-1, 1, 11, dtype="float32")[None], training=True)
    >>> float(np.max(np.abs(np.asarray(y) - np.linspace(-1, 1, 11)))) < 1 / 255
    True
    """

    def __init__(self, ema_decay=0.99, fixed_range=None, **kwargs):
        super().__init__(**kwargs)
        self.ema_decay = quantizers.check_ema_decay(ema_decay)
        if fixed_range is not None:
            fixed_range = tuple(float(v) for v in fixed_range)
            if len(fixed_range) != 2 or not fixed_range[0] <= 0.0 <= fixed_range[1] or fixed_range[0] == fixed_range[1]:
                raise ValueError(
                    "`fixed_range` must be (min, max) with min <= 0 <= max and min < max. "
                    f"Received: fixed_range={fixed_range!r}"
                )
        self.fixed_range = fixed_range
        self.calibrating = False  # see QuantizedWrapper

    def build(self, input_shape):
        self.output_range = quantizers.ActivationRange(self, "output", self.ema_decay, self.fixed_range)

    def call(self, inputs, training=None):
        return self.output_range(inputs, bool(training) or self.calibrating, self.calibrating)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"ema_decay": self.ema_decay, "fixed_range": self.fixed_range})
        return config


@keras.saving.register_keras_serializable(package="keras_bft")
class QuantizedOp(QuantizedWrapper):
    """Runs a weightless layer (Add, Concatenate, pooling, activation, ...) and fake-quantizes its output.

    Args:
        layer: the layer to run, e.g. `keras.layers.Add()`.
        activation: `"linear"`, `"relu"` or `"relu6"`, applied after `layer`
            (what TFLite fuses into an ADD/MUL/CONCATENATION's output).
        quantize_output: whether to fake-quantize the output. False where the
            converter gives the tensor its consumer's parameters (an input of a
            CONCATENATION used by nothing else).
        fixed_range: `(min, max)` where TFLite fixes the output range (softmax,
            sigmoid, tanh); default: learned.
        ema_decay: decay of the moving average of the output range.
        **kwargs: base layer arguments.
    """

    def __init__(
        self,
        layer,
        activation="linear",
        quantize_output=True,
        fixed_range=None,
        ema_decay=0.99,
        **kwargs,
    ):
        super().__init__(layer, ema_decay=ema_decay, **kwargs)
        if layer.weights:
            raise ValueError(
                f"QuantizedOp wraps layers without weights. Received: layer={layer.name!r} "
                f"({type(layer).__name__}) with {len(layer.weights)} weights"
            )
        self.activation = _check_fused_activation(activation)
        self.quantize_output = bool(quantize_output)
        self.fixed_range = None if fixed_range is None else tuple(float(v) for v in fixed_range)

    def build(self, input_shape):
        super().build(input_shape)
        self.form = int8_form(self.layer)
        # Ops that TFLite runs as several int8 ops get a range per intermediate tensor.
        if self.form in ("hard_swish", "rescaling"):
            self.scaled_range = self._range("scaled")
        if self.form in ("hard_swish", "hard_sigmoid"):
            self.gate_range = self._range("gate")
        self.output_range = self._range("output", self.fixed_range)

    def _run_int8_form(self, x, update):
        def observe(name, tensor):
            return getattr(self, f"{name}_range")(tensor, update, self.calibrating)

        if self.form == "rescaling":  # MUL then ADD
            return observe("scaled", x * float(self.layer.scale)) + float(self.layer.offset)
        if self.form == "hard_sigmoid":
            return activations.hard_sigmoid(x, observe)
        return activations.hard_swish(x, observe)

    def call(self, inputs, training=None):
        update = bool(training) or self.calibrating
        if self.form is not None:
            outputs = self._run_int8_form(inputs, update)
        else:
            outputs = self.layer(inputs)
        outputs = _apply_activation(outputs, self.activation)
        if self.quantize_output:
            outputs = self.output_range(outputs, update, self.calibrating)
        return outputs

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "activation": self.activation,
                "quantize_output": self.quantize_output,
                "fixed_range": self.fixed_range,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_bft")
class QuantizedLinear(QuantizedWrapper):
    """A Conv2D / DepthwiseConv2D / Dense / butterfly with its batch norm folded and int8 fake quantization.

    Computes `activation(batch_norm(layer(x)))` the way the int8 TFLite model
    will: the batch norm is folded into the kernel and bias, the folded kernel
    is fake-quantized per output channel (symmetric, `[-127, 127]`), and the
    output after the fused activation is fake-quantized per tensor. Dense runs
    as a 1x1 CONV_2D (the converter keeps per-channel weights for CONV_2D; its
    FULLY_CONNECTED path rejects per-channel fake quant). A butterfly runs in
    its export form: with `lowering="dense"` its dense matrix (residual
    included, computed from the stage kernels) is one 1x1 conv; otherwise its
    stages (merged by `merge_stages`) run as grouped 1x1 convs through
    `keras_bft.ops.lowering.grouped_conv_stages`, each stage's folded kernel
    quantized per channel and each stage's output quantized (int8 tensors of
    the exported graph); the residual branch is scaled by the batch norm (a
    1x1 int8 DEPTHWISE_CONV_2D) and added (an int8 ADD with the fused
    activation).

    Batch norm folding (Krishnamoorthi 2018, "Quantizing deep convolutional
    networks for efficient inference", section 3.2): the kernel is always
    folded with the *moving* standard deviation, so training and inference
    quantize the same weights. In training the layer also runs the float
    layer to get the batch statistics, updates the moving statistics like
    `BatchNormalization`, multiplies the quantized output by
    `moving_std / batch_std` and adds the batch-statistics bias, so the
    result is batch-normalized; in inference the correction is 1 and the bias
    uses the moving statistics: exactly the folded graph the converter emits.
    A batch norm with `trainable=False` always runs in inference mode.

    Args:
        layer: a `Conv2D`, `DepthwiseConv2D`, `Dense`, `ButterflyFusion` or
            `ButterflyStages` with linear activation and channels-last data.
        batch_norm: optional `BatchNormalization` on the last axis that
            follows `layer`; it is folded.
        activation: `"linear"`, `"relu"` or `"relu6"` after the batch norm.
        quantize_output: whether to fake-quantize the output (False where the
            only consumer is a CONCATENATION, which sets the tensor's range).
        ema_decay: decay of the moving averages of activation ranges.
        **kwargs: base layer arguments.
    """

    def __init__(
        self,
        layer,
        batch_norm=None,
        activation="linear",
        quantize_output=True,
        ema_decay=0.99,
        **kwargs,
    ):
        super().__init__(layer, ema_decay=ema_decay, **kwargs)
        if not isinstance(layer, LINEAR_TYPES):
            raise ValueError(
                "QuantizedLinear wraps Conv2D, DepthwiseConv2D, Dense, ButterflyFusion or ButterflyStages. "
                f"Received: layer={layer.name!r} ({type(layer).__name__})"
            )
        if layer.activation is not keras.activations.linear:
            raise ValueError(
                "The wrapped layer must have a linear activation (pass the activation to "
                f"QuantizedLinear). Received: layer={layer.name!r} with activation="
                f"{keras.activations.serialize(layer.activation)!r}"
            )
        if getattr(layer, "data_format", "channels_last") != "channels_last":
            raise ValueError(
                "Quantized layers need channels_last data (TFLite runs NHWC). Received: "
                f"layer={layer.name!r} with data_format={layer.data_format!r}"
            )
        if isinstance(batch_norm, dict):
            batch_norm = keras.saving.deserialize_keras_object(batch_norm)
        if batch_norm is not None:
            if not isinstance(batch_norm, keras.layers.BatchNormalization):
                raise ValueError(
                    f"`batch_norm` must be a BatchNormalization layer. Received: batch_norm={batch_norm!r}"
                )
        self.batch_norm = batch_norm
        self.activation = _check_fused_activation(activation)
        self.quantize_output = bool(quantize_output)

    # ----------------------------------------------------------------- build

    def build(self, input_shape):
        super().build(input_shape)
        output_shape = self.layer.compute_output_shape(input_shape)
        rank = len(output_shape)
        if self.batch_norm is not None:
            axis = self.batch_norm.axis
            axis = axis[0] if isinstance(axis, (list, tuple)) else axis
            if axis % rank != rank - 1:
                raise ValueError(
                    "The folded BatchNormalization must normalize the channel (last) axis. "
                    f"Received: axis={self.batch_norm.axis!r} for output shape {output_shape}"
                )
            if not self.batch_norm.built:
                self.batch_norm.build(output_shape)
        self.stage_ranges = []
        self.residual_range = None
        if self._runs_stages():
            _, plan = self._stage_kernels()
            # Every stage output is an int8 tensor; without a residual the last
            # stage's output is the layer's output.
            inner = plan.num_stages if self.layer.residual else plan.num_stages - 1
            self.stage_ranges = [self._range(f"stage_{i}") for i in range(inner)]
            if self.layer.residual and self.batch_norm is not None:
                self.residual_range = self._range("residual")
        self.output_range = self._range("output")

    def _runs_stages(self):
        """A butterfly exported as stages (a dense-lowered ButterflyFusion runs as one 1x1 conv)."""
        return isinstance(self.layer, _BUTTERFLIES) and self.layer.lowering != "dense"

    def _stage_kernels(self):
        kernels, plan = list(self.layer.kernels), self.layer.plan
        if plan.copies > 1:
            # The int8 stage loop runs one chain; the paper's copies need their own.
            raise ValueError(
                "Quantization-aware training runs a butterfly's stages with rectangular='min' "
                "(or in == out) only; quantize the paper's copies in their dense form (lowering='dense', or "
                "the form quantize_model's objective picks). Received: "
                f"layer={self.layer.name!r} with rectangular={getattr(self.layer, 'rectangular', 'paper')!r}"
            )
        merge_stages = getattr(self.layer, "merge_stages", None)
        if merge_stages is not None:
            kernels, plan = lowering_lib.merge_kernels(kernels, plan, merge_stages)
        return kernels, plan

    def compute_output_shape(self, input_shape):
        return self.layer.compute_output_shape(input_shape)

    # ------------------------------------------------------------------ call

    def call(self, inputs, training=None):
        update = bool(training) or self.calibrating
        bn_training = bool(training) and self.batch_norm is not None and self.batch_norm.trainable
        scale, correction, shift = self._fold(inputs, bn_training)
        if self._runs_stages():
            outputs = self._quantized_stages(inputs, scale, correction, shift, update)
        else:
            outputs = self._quantized_linear(inputs, scale)
            if correction is not None:
                outputs = outputs * correction
            if shift is not None:
                outputs = outputs + shift
            outputs = _apply_activation(outputs, self.activation)
        if self.quantize_output:
            outputs = self.output_range(outputs, update, self.calibrating)
        return outputs

    def _layer_bias(self):
        return self.layer.bias if self.layer.use_bias else None

    def _fold(self, inputs, bn_training):
        """Per-channel (scale, correction, shift): output = quantized(x, W * scale) * correction + shift."""
        bias = self._layer_bias()
        bn = self.batch_norm
        if bn is None:
            return None, None, bias
        moving_std = ops.sqrt(bn.moving_variance + bn.epsilon)
        gamma = bn.gamma if bn.scale else ops.ones_like(moving_std)
        beta = bn.beta if bn.center else ops.zeros_like(moving_std)
        scale = gamma / moving_std
        bias = ops.zeros_like(moving_std) if bias is None else bias
        if not bn_training:
            return scale, None, beta + scale * (bias - bn.moving_mean)
        # The float layer's output gives the batch statistics (its bias included).
        float_outputs = self.layer(inputs)
        axes = tuple(range(len(float_outputs.shape) - 1))
        mean, variance = ops.moments(float_outputs, axes=axes)
        momentum = bn.momentum
        bn.moving_mean.assign(bn.moving_mean * momentum + mean * (1.0 - momentum))
        bn.moving_variance.assign(bn.moving_variance * momentum + variance * (1.0 - momentum))
        batch_std = ops.sqrt(variance + bn.epsilon)
        return scale, moving_std / batch_std, beta + gamma * (bias - mean) / batch_std

    # --------------------------------------------------- conv / depthwise / dense

    def _quantized_linear(self, inputs, scale):
        layer = self.layer
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            kernel = layer.kernel
            kh, kw, channels, multiplier = kernel.shape
            flat = ops.reshape(kernel, (kh, kw, channels * multiplier))
            if scale is not None:
                flat = flat * scale
            kernel = ops.reshape(quantizers.quantize_weights(flat), kernel.shape)
            return ops.depthwise_conv(
                inputs,
                kernel,
                strides=layer.strides,
                padding=layer.padding,
                data_format="channels_last",
                dilation_rate=layer.dilation_rate,
            )
        if isinstance(layer, (keras.layers.Dense, ButterflyFusion)):
            # A dense-lowered butterfly is exported as one 1x1 conv of its dense
            # matrix (residual included), computed from the stage kernels.
            kernel = layer.kernel if isinstance(layer, keras.layers.Dense) else lowering_lib.dense_from_kernels(
                list(layer.kernels), layer.plan, layer.residual
            )
            if scale is not None:
                kernel = kernel * scale
            return _quantized_pointwise(inputs, kernel)
        kernel = layer.kernel if scale is None else layer.kernel * scale
        return ops.conv(
            inputs,
            quantizers.quantize_weights(kernel),
            strides=layer.strides,
            padding=layer.padding,
            data_format="channels_last",
            dilation_rate=layer.dilation_rate,
        )

    def _quantized_stages(self, inputs, scale, correction, shift, update):
        """The butterfly as its int8 stages (grouped convs), the batch norm folded into the last one."""
        layer = self.layer
        kernels, plan = self._stage_kernels()
        in_channels, out_channels = plan.in_channels, plan.out_channels
        last = plan.num_stages - 1

        def transform_kernel(i, stage, kernel):
            if i == last and scale is not None:
                kernel = kernel * lowering_lib.conv_order(scale, stage, 1.0)
            return quantizers.quantize_weights(kernel)

        def observe(i, stage, x):
            if i == last:
                if correction is not None:
                    x = x * lowering_lib.conv_order(correction, stage, 1.0)
                if shift is not None:
                    x = x + lowering_lib.conv_order(shift, stage, 0.0)
                if not layer.residual:
                    # Elementwise, so it commutes with the shuffle; TFLite fuses it into the CONV_2D.
                    x = _apply_activation(x, self.activation)
            if i < len(self.stage_ranges):
                x = self.stage_ranges[i](x, update, self.calibrating)
            return x

        matrix = ops.reshape(inputs, (-1, in_channels))
        x = lowering_lib.grouped_conv_stages(matrix, kernels, plan, transform_kernel, observe)
        x = _restore_leading(x, inputs, out_channels)
        if not layer.residual:
            return x
        residual = inputs if in_channels <= out_channels else inputs[..., :out_channels]
        if scale is not None:
            residual = _scale_channels(residual, scale[: residual.shape[-1]])
            if correction is not None:
                residual = residual * correction[: residual.shape[-1]]
            residual = self.residual_range(residual, update, self.calibrating)
        if in_channels < out_channels:
            pad = [(0, 0)] * (len(inputs.shape) - 1) + [(0, out_channels - in_channels)]
            residual = ops.pad(residual, pad)
        return _apply_activation(x + residual, self.activation)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "batch_norm": (
                    None
                    if self.batch_norm is None
                    else keras.saving.serialize_keras_object(self.batch_norm)
                ),
                "activation": self.activation,
                "quantize_output": self.quantize_output,
            }
        )
        return config


def int8_form(layer):
    """How TFLite runs a weightless layer in int8 when it takes several ops, else None.

    `"hard_swish"`, `"hard_sigmoid"` (see `keras_bft.ops.activations`) or
    `"rescaling"` (MUL then ADD).
    """
    if isinstance(layer, keras.layers.Activation):
        name = getattr(layer.activation, "__name__", "")
        if name in ("hard_swish", "hard_silu"):
            return "hard_swish"
        if name == "hard_sigmoid":
            return "hard_sigmoid"
    if isinstance(layer, keras.layers.Rescaling):
        if isinstance(layer.scale, (int, float)) and isinstance(layer.offset, (int, float)) and layer.offset:
            return "rescaling"
    return None


def _quantized_pointwise(inputs, kernel):
    """`inputs @ fake_quant(kernel)` over the last axis as a 1x1 conv.

    The converter keeps per-channel weights for CONV_2D (its FULLY_CONNECTED
    path rejects per-channel fake quant), and needs the fake quant on the 4-D
    filter itself. Images run the conv directly; other ranks as `(M, 1, 1, C)`.
    """
    in_features, units = kernel.shape
    kernel = quantizers.quantize_weights(ops.reshape(kernel, (1, 1, in_features, units)))
    if len(inputs.shape) == 4:
        return ops.conv(inputs, kernel, padding="valid")
    outputs = ops.conv(ops.reshape(inputs, (-1, 1, 1, in_features)), kernel, padding="valid")
    return _restore_leading(outputs, inputs, units)


def _scale_channels(x, scale):
    """x * scale per channel, as a 1x1 DEPTHWISE_CONV_2D with per-channel int8 weights.

    Each channel's factor is then exact in int8 (it is its own channel's
    maximum); a MUL would make TFLite quantize the factors per tensor.
    """
    channels = scale.shape[0]
    kernel = quantizers.quantize_weights(ops.reshape(scale, (1, 1, channels)))
    kernel = ops.reshape(kernel, (1, 1, channels, 1))
    if len(x.shape) == 4:
        return ops.depthwise_conv(x, kernel, padding="valid")
    flat = ops.depthwise_conv(ops.reshape(x, (-1, 1, 1, channels)), kernel, padding="valid")
    return _restore_leading(flat, x, channels)


def _restore_leading(outputs, inputs, channels):
    """Reshapes a result with `channels` last back to `inputs`' leading dimensions."""
    leading = inputs.shape[1:-1]
    if all(d is not None for d in leading):
        return ops.reshape(outputs, (-1, *leading, channels))
    return ops.reshape(outputs, (*ops.shape(inputs)[:-1], channels))
