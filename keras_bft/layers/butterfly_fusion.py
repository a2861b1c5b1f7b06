"""The ButterflyFusion layer: a thin owner of butterfly stage weights."""

import keras
import numpy as np
from keras import ops

from keras_bft.initializers import ButterflyUniform
from keras_bft.layers.data_format import channel_axis
from keras_bft.layers.data_format import standardize_data_format
from keras_bft.ops import arguments
from keras_bft.ops import lowering as lowering_lib
from keras_bft.ops import oracle
from keras_bft.ops import plans


def fuse_channels(inputs, kernels, plan, residual, lowering, bias, activation, channels_first):
    """The layer's forward pass given its stage kernels: transform, bias, activation.

    Shared by `ButterflyFusion` and the exporter's `ButterflyStages`, which
    differ only in where their kernels come from.
    """
    if channels_first:
        inputs = ops.moveaxis(inputs, 1, -1)
    outputs = lowering_lib.butterfly_transform(inputs, kernels, plan, residual, lowering)
    if bias is not None:
        outputs = outputs + bias
    if activation is not None:
        outputs = activation(outputs)
    if channels_first:
        outputs = ops.moveaxis(outputs, -1, 1)
    return outputs


@keras.saving.register_keras_serializable(package="keras_bft")
class ButterflyFusion(keras.layers.Layer):
    """Channel fusion by a butterfly transform: O(n log n) in place of a 1x1 conv or Dense.

    Mixes the channel axis of its input like `Conv2D(filters, 1)` or
    `Dense(filters)`, but through `log_k(n)` butterfly stages (Alizadeh et al.,
    "Butterfly Transform", CVPR 2020): each stage splits the channels into
    groups of `k`, mixes each group with its own dense `k x k` block, and
    perfect-shuffles the result, so every output depends on every input at
    `n * k * log_k(n)` multiply-adds instead of `n^2`. The stages really run as
    stages (batched matmuls and transposes); the dense matrix is never built
    unless `lowering="dense"` asks for it.

    In != out: a square butterfly on `min(in, filters)` channels whose first
    stage reads `in / groups` inputs per group (when `in > filters`) or whose
    last stage writes `filters / groups` outputs per group (when
    `in < filters`), so cost follows the smaller side. Counts that do not factor
    into radices near `k` are zero-padded and cropped (exact; see `plan`).
    `rectangular="paper"` builds the paper's rule instead: `ceil(max / min)`
    independent square butterflies on `min(in, filters)` channels, whose
    outputs are concatenated (in < filters) or which read one chunk of the
    input each and are summed (in > filters); cost follows the larger side.

    Args:
        filters: number of output channels.
        butterfly_k: target radix (block size) of each stage; the stage count
            is `ceil(log_k(min(in, filters)))`. The paper's default is 4; fewer,
            larger stages (e.g. `k ~ sqrt(n)`) run faster on CPUs.
        radices: explicit stage radices, a list of integers >= 2 whose
            product is `min(in, filters)`, e.g. `[32, 32]` for 1024 channels
            (`[8]`: one stage). Overrides `butterfly_k`.
        num_stages: explicit number of stages (radices chosen near
            `n ** (1 / num_stages)`). Overrides `butterfly_k`. Zero padding
            never exceeds the real channels, so `n = min(in, filters)`
            channels allow at most `n.bit_length()` stages (4 for 8 channels);
            more raise a ValueError when the layer is built.
        residual: add the input to the output (identity on the first
            `min(in, filters)` channels): the paper's first-to-last residual.
            With `rectangular="paper"`, each square copy adds its own input.
        use_bias: whether to add a bias vector.
        activation: activation applied to the output (default: none).
        data_format: `"channels_last"` or `"channels_first"`, for inputs of rank
            >= 3; defaults to `keras.config.image_data_format()`. Rank-2 inputs
            always mix their last axis.
        lowering: how the stages run: `"auto"` (the best measured, today
            `"group_major"` on every backend), `"group_major"`, `"shuffle"`,
            `"multiply_sum"`, `"grouped_conv"` (the int8 LiteRT form) or
            `"dense"` (a dense fold). All compute the same function; see
            `keras_bft.ops.lowering`.
        merge_stages: optional stage counts (positive integers summing to the
            number of stages) to compose into single block stages at run time,
            e.g. `(2, 3)` for five stages: the same function with fewer passes
            (what exporters use). Default: run each stage.
        kernel_initializer: initializer of each stage kernel. Default
            `"butterfly"`: `ButterflyUniform`, whose per-path product has the
            variance of a Glorot-initialized dense kernel.
        bias_initializer: initializer of the bias.
        kernel_regularizer: regularizer applied to each stage kernel.
        bias_regularizer: regularizer applied to the bias.
        activity_regularizer: regularizer applied to the output.
        kernel_constraint: constraint applied to each stage kernel.
        bias_constraint: constraint applied to the bias.
        rectangular: how `in != filters` is built: `"min"` (default; one
            butterfly on `min(in, filters)` channels with a rectangular
            first or last stage) or `"paper"` (the paper's square copies, as
            in its reference code; see `keras_bft.ops.plans`).
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Integer and bool inputs are cast to the layer's compute dtype, as `Dense`
    computes them.

    Input shape:
        N-D tensor of rank >= 2: `(batch, ..., channels)`, or
        `(batch, channels, ...)` with `data_format="channels_first"`.

    Output shape:
        The same with `channels` replaced by `filters`.

    Example:

    >>> x = np.random.rand(2, 8, 8, 64).astype("float32")
    >>> layer = ButterflyFusion(128, butterfly_k=8)
    >>> tuple(layer(x).shape)
    (2, 8, 8, 128)
    >>> y = x @ layer.dense_kernel()
    >>> bool(np.allclose(layer(x), y, atol=1e-4))
    True
    """

    def __init__(
        self,
        filters,
        butterfly_k=4,
        radices=None,
        num_stages=None,
        residual=True,
        use_bias=False,
        activation=None,
        data_format=None,
        lowering="auto",
        merge_stages=None,
        kernel_initializer="butterfly",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        rectangular="min",
        **kwargs,
    ):
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        filters = arguments.positive_int("filters", filters)
        butterfly_k, radices, num_stages = arguments.check_butterfly(butterfly_k, radices, num_stages)
        data_format = standardize_data_format(data_format)
        if lowering != "auto" and lowering not in lowering_lib.LOWERINGS:
            raise ValueError(
                f"`lowering` must be 'auto' or one of {lowering_lib.LOWERINGS}. "
                f"Received: lowering={lowering!r}"
            )
        merge_stages = arguments.check_merge_stages(merge_stages)
        self.filters = filters
        self.butterfly_k = butterfly_k
        self.radices = None if radices is None else list(radices)
        plans.check_rectangular(rectangular)
        self.num_stages = num_stages
        self.residual = bool(residual)
        self.use_bias = bool(use_bias)
        self.activation = keras.activations.get(activation)
        self.data_format = data_format
        self.lowering = lowering
        self.merge_stages = None if merge_stages is None else list(merge_stages)
        self.rectangular = rectangular
        self.kernel_initializer = (
            None if kernel_initializer == "butterfly" else keras.initializers.get(kernel_initializer)
        )
        self.bias_initializer = keras.initializers.get(bias_initializer)
        self.kernel_regularizer = keras.regularizers.get(kernel_regularizer)
        self.bias_regularizer = keras.regularizers.get(bias_regularizer)
        self.kernel_constraint = keras.constraints.get(kernel_constraint)
        self.bias_constraint = keras.constraints.get(bias_constraint)
        self.input_spec = keras.layers.InputSpec(min_ndim=2)
        self.plan = None
        self.kernels = []

    def channel_axis(self, rank):
        """The channel axis of a rank-`rank` input: 1 for channels_first images, else -1."""
        return channel_axis(self.data_format, rank)

    def build(self, input_shape):
        rank = len(input_shape)
        if rank < 2:
            raise ValueError(
                f"ButterflyFusion needs an input of rank >= 2. Received: input_shape={input_shape}"
            )
        axis = self.channel_axis(rank)
        channels = input_shape[axis]
        if channels is None:
            raise ValueError(
                "The channel dimension of the input to ButterflyFusion must be known. "
                f"Received: input_shape={input_shape} (data_format={self.data_format})"
            )
        self.plan = plans.make_plan(
            int(channels), self.filters, self.butterfly_k, self.radices, self.num_stages,
            self.rectangular,
        )
        arguments.check_merge_stages(self.merge_stages, self.plan.num_stages)
        initializer = self.kernel_initializer or ButterflyUniform(
            self.plan.num_stages, int(channels), self.filters
        )
        self.kernels = [
            self.add_weight(
                name=f"stage_{i}_kernel",
                shape=stage.kernel_shape,
                initializer=initializer,
                regularizer=self.kernel_regularizer,
                constraint=self.kernel_constraint,
            )
            for i, stage in enumerate(self.plan.stages)
        ]
        self.bias = (
            self.add_weight(
                name="bias",
                shape=(self.filters,),
                initializer=self.bias_initializer,
                regularizer=self.bias_regularizer,
                constraint=self.bias_constraint,
            )
            if self.use_bias
            else None
        )
        self.input_spec = keras.layers.InputSpec(min_ndim=2, axes={axis: int(channels)})

    def call(self, inputs):
        channels_first = self.channel_axis(len(inputs.shape)) == 1
        kernels, plan = list(self.kernels), self.plan
        if not keras.backend.is_float_dtype(inputs.dtype):
            # As Dense does (its matmul promotes): integer and bool inputs compute in the layer's dtype.
            inputs = ops.cast(inputs, self.compute_dtype)
        if self.merge_stages is not None:
            kernels, plan = lowering_lib.merge_kernels(kernels, plan, self.merge_stages)
        lowering = (
            lowering_lib.default_lowering(plan) if self.lowering == "auto" else self.lowering
        )
        return fuse_channels(
            inputs, kernels, plan, self.residual, lowering, self.bias, self.activation, channels_first
        )

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        shape[self.channel_axis(len(shape))] = self.filters
        return tuple(shape)

    def dense_kernel(self):
        """The equivalent `(in_channels, filters)` matrix, as NumPy (residual included, bias not).

        Computed from the definition of the stages, independently of how the
        layer runs: `layer(x)` equals `x @ layer.dense_kernel() (+ bias)`.
        """
        if self.plan is None:
            raise ValueError("The layer is not built yet: call it on an input first.")
        kernels = [np.asarray(ops.convert_to_numpy(k), dtype=np.float64) for k in self.kernels]
        return oracle.dense_matrix(kernels, self.plan, self.residual).astype(np.float32)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "filters": self.filters,
                "butterfly_k": self.butterfly_k,
                "radices": self.radices,
                "num_stages": self.num_stages,
                "residual": self.residual,
                "use_bias": self.use_bias,
                "activation": keras.activations.serialize(self.activation),
                "data_format": self.data_format,
                "lowering": self.lowering,
                "merge_stages": self.merge_stages,
                "rectangular": self.rectangular,
                "kernel_initializer": (
                    "butterfly"
                    if self.kernel_initializer is None
                    else keras.initializers.serialize(self.kernel_initializer)
                ),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer),
                "kernel_regularizer": keras.regularizers.serialize(self.kernel_regularizer),
                "bias_regularizer": keras.regularizers.serialize(self.bias_regularizer),
                "activity_regularizer": keras.regularizers.serialize(self.activity_regularizer),
                "kernel_constraint": keras.constraints.serialize(self.kernel_constraint),
                "bias_constraint": keras.constraints.serialize(self.bias_constraint),
            }
        )
        return config
