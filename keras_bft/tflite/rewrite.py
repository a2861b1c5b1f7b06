"""Exact export rewrites: each ButterflyFusion to its fastest lowering, undelegated ops to delegated ones.

Besides the ButterflyFusion choice below: int8 hard-swish becomes `(x / 6) *
relu6(x + 3)` and ShuffleNet's ChannelSplit (SPLIT_V) becomes SPLIT or strided
slices, because LiteRT's XNNPACK delegate runs neither HARD_SWISH in int8 nor
SPLIT_V.

The choice per layer is made by a small latency model of LiteRT's XNNPACK CPU
kernels (`CostModel`), whose coefficients were measured with
`benchmarks/calibrate_cost_model.py` (numbers in docs/benchmarks-tflite.md).
Candidates, all the same function as the layer:

- dense fold: one 1x1 `Conv2D` (`Dense` for rank-2 inputs) with the layer's
  `dense_kernel()` (residual folded in); TFLite then also folds a following
  BatchNormalization into it, exactly as for a pointwise conv;
- stage merges: any split of the stages into consecutive runs, each run
  composed into one block-diagonal stage (`ButterflyPlan.merge`), run with
  the `"grouped_conv"` lowering (grouped 1x1 CONV_2D + shuffle; XNNPACK runs it
  in int8 and float) or, for float, `"shuffle"` (BATCH_MATMUL + shuffle).
"""

import dataclasses
import itertools
import math

import keras
import numpy as np
from keras import ops

from keras_bft.layers.butterfly_fusion import ButterflyFusion
from keras_bft.layers.butterfly_fusion import fuse_channels
from keras_bft.ops import lowering as lowering_lib
from keras_bft.ops import plans


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Latency model of one ButterflyFusion lowering in LiteRT (XNNPACK, 1 thread), in microseconds.

    Attributes:
        group_ns_per_mac: `((size, ns), ...)`: nanoseconds per
            multiply-accumulate of a grouped 1x1 conv whose groups map `size`
            channels to `size` (a dense conv is one group); interpolated in
            log(size), clamped at the ends. Rectangular groups use
            min(group_in, group_out), checked by benchmarks/layer_choices.py.
        shuffle_ns_per_value: reshape + transpose + reshape, per value.
        add_ns_per_value: the residual add, per value.
        op_us: fixed cost of one delegated op.
    """

    group_ns_per_mac: tuple
    shuffle_ns_per_value: float
    add_ns_per_value: float
    op_us: float

    def ns_per_mac(self, group_in):
        points = sorted(self.group_ns_per_mac)
        xs = [math.log(g) for g, _ in points]
        return float(np.interp(math.log(group_in), xs, [ns for _, ns in points]))

    def dense_us(self, positions, in_channels, out_channels):
        return (positions * in_channels * out_channels * self.ns_per_mac(in_channels)) / 1e3 + self.op_us

    def stages_us(self, positions, plan, residual):
        total = 0.0
        for stage in plan.stages:
            # A group with few inputs OR few outputs vectorizes badly: key on the smaller side.
            total += positions * stage.macs * self.ns_per_mac(min(stage.group_in, stage.group_out)) / 1e3
            total += positions * stage.out_channels * self.shuffle_ns_per_value / 1e3
            total += 2 * self.op_us
        if residual:
            total += positions * plan.out_channels * self.add_ns_per_value / 1e3 + self.op_us
        if plan.padding != (0, 0):
            total += 2 * self.op_us + positions * plan.padded_in * self.shuffle_ns_per_value / 1e3
        return total


# Fitted by benchmarks/calibrate_cost_model.py on the 2-core AMD EPYC (AVX-512 VNNI) build machine,
# LiteRT 2.3.0 XNNPACK, 1 thread, single ops at 1x14x14x512, 2026-11-26 (docs/benchmarks-tflite.md).
# int8 predictions of whole layers were within ~25% of measurement; float ones under-predict radix-4
# stages and 1024-channel dense convs (weights beyond the cache), which only makes float merge more.
INT8_COST_MODEL = CostModel(
    group_ns_per_mac=(
        (4, 0.1995), (8, 0.0517), (16, 0.0156), (32, 0.0098), (64, 0.007), (128, 0.0056), (512, 0.0048),
    ),
    shuffle_ns_per_value=0.1384,
    add_ns_per_value=0.1387,
    op_us=2.0,
)
FLOAT_COST_MODEL = CostModel(
    group_ns_per_mac=(
        (4, 0.1976), (8, 0.0653), (16, 0.0291), (32, 0.0266), (64, 0.0203), (128, 0.0195), (512, 0.0185),
    ),
    shuffle_ns_per_value=0.4157,
    add_ns_per_value=0.1526,
    op_us=2.0,
)


def default_cost_model(quantization):
    return INT8_COST_MODEL if quantization == "int8" else FLOAT_COST_MODEL


def _compositions(count):
    """Every split of `count` stages into consecutive runs, e.g. 3 -> (1,1,1), (1,2), (2,1), (3,)."""
    for cuts in itertools.product((False, True), repeat=count - 1):
        segments, run = [], 1
        for cut in cuts:
            if cut:
                segments.append(run)
                run = 1
            else:
                run += 1
        segments.append(run)
        yield tuple(segments)


@dataclasses.dataclass(frozen=True)
class Decision:
    """How one ButterflyFusion layer is exported."""

    layer: str
    kind: str  # "dense" or "stages"
    lowering: str
    merge_stages: tuple
    radices: tuple
    predicted_us: float
    original_us: float


def choose_lowering(
    layer, positions, quantization="int8", cost_model=None, allow_dense=True, followed_by_bn=False
):
    """Picks the cheapest exact lowering of a built `ButterflyFusion` for `positions` pixels.

    Args:
        layer: a built ButterflyFusion.
        positions: pixels per example (batch included) of its input.
        quantization: the export precision (picks the default cost model).
        cost_model: optional `CostModel`.
        allow_dense: whether a dense fold is a candidate.
        followed_by_bn: a BatchNormalization consumes the output. TFLite folds
            it into a dense fold's conv for free; after stages its scale stays
            one elementwise MUL pass (the converter moves the shift into the
            last conv's bias), charged to the staged candidates.

    Returns:
        A `Decision`.
    """
    cost_model = cost_model or default_cost_model(quantization)
    plan = layer.plan
    epilogue = 0.0
    if followed_by_bn:
        epilogue = positions * plan.out_channels * cost_model.add_ns_per_value / 1e3 + cost_model.op_us
    original = cost_model.stages_us(positions, plan, layer.residual) + epilogue
    best = None
    for segments in _compositions(plan.num_stages):
        merged = plan.merge(segments)
        cost = cost_model.stages_us(positions, merged, layer.residual) + epilogue
        if best is None or cost < best.predicted_us:
            best = Decision(
                layer.name, "stages", "grouped_conv", segments, merged.radices, cost, original
            )
    if allow_dense:
        cost = cost_model.dense_us(positions, plan.in_channels, plan.out_channels)
        if cost <= best.predicted_us:
            best = Decision(
                layer.name, "dense", "dense", (plan.num_stages,),
                (min(plan.in_channels, plan.out_channels),), cost, original,
            )
    return best


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
                "copies": self.plan.copies,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_bft")
class HardSwishAsProduct(keras.layers.Layer):
    """`(x / 6) * relu6(x + 3)`: hard-swish without the HARD_SWISH op.

    LiteRT's XNNPACK delegate lacks int8 HARD_SWISH, and the converter folds
    `x * relu6(x + 3) / 6` back into it; scaling `x` first escapes that pattern
    and gives MUL, ADD (fused RELU6), MUL, all delegated in int8 (checked by
    the tests). Same function as `hard_swish`.
    """

    def call(self, inputs):
        return (inputs * (1.0 / 6.0)) * ops.relu6(inputs + 3.0)


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


def _is_channel_split(layer):
    return type(layer).__name__ == "ChannelSplit" and hasattr(layer, "_sizes")


def _is_hard_swish(layer):
    if type(layer) is not keras.layers.Activation:
        return False
    return getattr(layer.activation, "__name__", "") in ("hard_swish", "hard_silu")


def _positions(layer, shapes):
    try:
        shape = tuple(layer.input.shape)
    except (AttributeError, ValueError):
        shape = None
    if shape is None:
        return None, None
    channel_axis = layer._channel_axis(len(shape))
    spatial = [d for i, d in enumerate(shape[1:], start=1) if i != channel_axis % len(shape)]
    batch = shapes[0][0]
    if any(d is None for d in spatial):
        return None, shape
    return batch * int(np.prod(spatial, dtype=np.int64)), shape


def _followed_by_bn(layer):
    consumers = [node.operation for node in getattr(layer, "_outbound_nodes", [])]
    return bool(consumers) and all(
        isinstance(c, keras.layers.BatchNormalization) for c in consumers
    )


def _dense_fold(layer, shape):
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
    elif layer._channel_axis(len(shape)) == -1:
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


def prepare_for_export(model, quantization, shapes, cost_model=None):
    """A clone of `model` with every ButterflyFusion in its chosen lowering (weights copied).

    Args:
        model: a Keras model.
        quantization: the target precision (`"int8"` picks the int8 cost model
            and rewrites hard-swish).
        shapes: the static input shapes of the export (batch first).
        cost_model: optional `CostModel`.

    Returns:
        `(model, decisions)`: the clone (or `model` itself when nothing
        changes) and one `Decision` per ButterflyFusion.
    """
    decisions = []
    changed = []

    def clone(layer):
        if isinstance(layer, ButterflyFusion) and layer.plan is not None:
            positions, shape = _positions(layer, shapes)
            if positions is None:
                return layer
            bn = _followed_by_bn(layer)
            decision = choose_lowering(layer, positions, quantization, cost_model, True, bn)
            new = None
            if decision.kind == "dense":
                new = _dense_fold(layer, (shapes[0][0], *shape[1:]))
            if new is None:
                if decision.kind == "dense":
                    decision = choose_lowering(layer, positions, quantization, cost_model, False, bn)
                new = staged_export_layer(layer, decision.merge_stages, decision.lowering)
            decisions.append(decision)
            changed.append(layer.name)
            return new
        if _is_channel_split(layer):
            axis, first, _ = layer._sizes(tuple(layer.input.shape))
            changed.append(layer.name)
            return SplitAsBuiltin(axis, first, name=layer.name)
        if quantization == "int8" and _is_hard_swish(layer):
            changed.append(layer.name)
            return HardSwishAsProduct(name=layer.name)
        return layer

    clone_model = keras.models.clone_model(model, clone_function=clone, recursive=True)
    if not changed:
        return model, decisions
    return clone_model, decisions
