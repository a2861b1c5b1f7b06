"""ButterflyStages: a butterfly of any explicit plan, the form the exporter writes merged stages in."""

import keras
import numpy as np
from keras import ops

from keras_bft.layers.butterfly_fusion import fuse_channels
from keras_bft.layers.data_format import channel_axis
from keras_bft.layers.data_format import standardize_data_format
from keras_bft.ops import lowering as lowering_lib
from keras_bft.ops import plans


@keras.saving.register_keras_serializable(package="keras_bft")
class ButterflyStages(keras.layers.Layer):
    """A butterfly of an explicit plan (e.g. merged stages), its stage kernels stored as weights.

    The exporter's form of a ButterflyFusion whose stages it merged: it
    computes the merged kernels on the weight side (NumPy, `from_fusion`)
    so the converter sees plain constants. Merging at trace time leaves
    einsums on constants that TFLite's constant folding skips when large, and
    the int8 quantizer then treats the conv filters as activations.

    Args:
        stages: `(groups, group_in, group_out)` per stage.
        in_channels: channels read (before zero-padding).
        out_channels: channels written (after cropping).
        residual, use_bias, activation, data_format: as in ButterflyFusion.
        lowering: one of `keras_bft.ops.LOWERINGS` except `"dense"`.
        copies: `ButterflyPlan.copies` (the paper's square copies when > 1).
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
        copies=1,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.stages = [tuple(int(v) for v in s) for s in stages]
        self.plan = plans.ButterflyPlan(
            int(in_channels), int(out_channels), tuple(plans.Stage(*s) for s in self.stages),
            int(copies),
        )
        self.residual = bool(residual)
        self.use_bias = bool(use_bias)
        self.activation = keras.activations.get(activation)
        self.data_format = standardize_data_format(data_format)
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

    @classmethod
    def from_fusion(cls, layer, merge_stages, lowering="grouped_conv"):
        """A built `ButterflyStages` computing the built ButterflyFusion `layer` with its stages merged.

        Args:
            layer: a built ButterflyFusion.
            merge_stages: how many of its stages each stage of the result takes.
            lowering: a staged lowering.

        Returns:
            A `ButterflyStages` with the merged kernels (merged in float64 NumPy).
        """
        kernels = [np.asarray(ops.convert_to_numpy(k), dtype=np.float64) for k in layer.kernels]
        merged, plan = lowering_lib.merge_kernels(kernels, layer.plan, tuple(merge_stages))
        new = cls(
            [s.kernel_shape for s in plan.stages],
            plan.in_channels,
            plan.out_channels,
            residual=layer.residual,
            use_bias=layer.use_bias,
            activation=layer.activation,
            data_format=layer.data_format,
            lowering=lowering,
            copies=plan.copies,
            name=layer.name,
            dtype=layer.dtype_policy,
        )
        new.build(None)
        weights = [np.asarray(ops.convert_to_numpy(k), dtype=np.float32) for k in merged]
        if layer.use_bias:
            weights.append(ops.convert_to_numpy(layer.bias))
        new.set_weights(weights)
        return new

    def call(self, inputs):
        channels_first = channel_axis(self.data_format, len(inputs.shape)) == 1
        return fuse_channels(
            inputs, list(self.kernels), self.plan, self.residual, self.lowering,
            self.bias, self.activation, channels_first,
        )

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        shape[channel_axis(self.data_format, len(shape))] = self.plan.out_channels
        return tuple(shape)

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
                "copies": self.plan.copies,
            }
        )
        return config
