"""Multiply-accumulate counts of Keras models, butterflies included.

`count_macs` walks the graph of a functional (or built Sequential) model, takes
each layer's static input/output shapes from the graph, and counts
multiply-accumulates (MACs, the "FLOPs" / "mult-adds" of the MobileNet and
ShuffleNet papers) for one example:

- `Conv1D/2D/3D` (incl. `groups`): output positions x filters x
  kernel volume x input channels / groups.
- `Conv*DTranspose`: input positions x kernel volume x input channels x
  filters.
- `DepthwiseConv1D/2D`: output positions x output channels x kernel volume.
- `SeparableConv1D/2D`: its depthwise part plus its pointwise part.
- `Dense`: positions x input features x units.
- `ButterflyFusion`: positions x `layer.plan.macs` (its actual stages,
  padding included; the residual add is not a MAC).
- Nested models: the sum over their layers, counted once per call.

Ignored (0 MACs, by the papers' convention): biases, BatchNormalization,
activations, Add/Multiply/Concatenate, pooling (global or not), padding,
reshapes, dropout, rescaling, channel split/shuffle, and any other layer
without a kernel. A layer type with weights that is not in the list above
(e.g. `EinsumDense`, `Embedding`, RNNs) raises a `ValueError` instead of being
silently counted as 0.
"""

import math

import keras

from keras_bft.layers.butterfly_fusion import ButterflyFusion
from keras_bft.layers.data_format import channel_axis
from keras_bft.utils.layer_graph import LayerGraph

# Layers with weights that still count 0 MACs (elementwise scale/shift).
_FREE_WEIGHTED = (
    keras.layers.BatchNormalization,
    keras.layers.LayerNormalization,
    keras.layers.GroupNormalization,
    keras.layers.Normalization,
    keras.layers.PReLU,
)


def _positions(shape, channel_axis):
    """Product of the non-batch, non-channel dimensions."""
    dims = [d for i, d in enumerate(shape[1:], start=1) if i != channel_axis % len(shape)]
    if any(d is None for d in dims):
        raise ValueError(
            "count_macs needs static spatial dimensions; build the model with a fixed "
            f"input_shape. Received a layer output of shape {tuple(shape)}"
        )
    return math.prod(dims)


def _layer_macs(layer, in_shape, out_shape):
    """MACs of one call of `layer`, or None for a layer the count ignores."""
    axis = channel_axis(getattr(layer, "data_format", None), len(out_shape))
    if isinstance(layer, ButterflyFusion):
        return _positions(out_shape, axis) * layer.plan.macs
    if isinstance(layer, keras.layers.Dense):
        return _positions(out_shape, -1) * in_shape[-1] * layer.units
    if isinstance(layer, keras.layers.SeparableConv2D) or isinstance(layer, keras.layers.SeparableConv1D):
        positions = _positions(out_shape, axis)
        in_channels = in_shape[axis]
        depthwise = positions * in_channels * layer.depth_multiplier * math.prod(layer.kernel_size)
        return depthwise + positions * in_channels * layer.depth_multiplier * layer.filters
    if isinstance(layer, (keras.layers.DepthwiseConv2D, keras.layers.DepthwiseConv1D)):
        return _positions(out_shape, axis) * out_shape[axis] * math.prod(layer.kernel_size)
    if isinstance(layer, (keras.layers.Conv1DTranspose, keras.layers.Conv2DTranspose, keras.layers.Conv3DTranspose)):
        return (
            _positions(in_shape, axis) * math.prod(layer.kernel_size) * in_shape[axis] * layer.filters
        )
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        per_output = math.prod(layer.kernel_size) * in_shape[axis] // layer.groups
        return _positions(out_shape, axis) * out_shape[axis] * per_output
    if layer.weights and not isinstance(layer, _FREE_WEIGHTED):
        raise ValueError(
            f"count_macs does not know how to count layer {layer.name!r} of type "
            f"{type(layer).__name__}. Received a model containing it."
        )
    return None


def _rows(model, prefix):
    for call in LayerGraph(model, caller="count_macs").calls:
        layer = call.layer
        if not isinstance(layer, keras.layers.Layer):
            continue
        name = f"{prefix}{layer.name}"
        if isinstance(layer, keras.Model):
            yield from _rows(layer, f"{name}/")
            continue
        in_shape = call.input_shape if call.inputs else None
        out_shape = call.output_shape
        macs = _layer_macs(layer, in_shape, out_shape)
        if macs is not None:
            yield {
                "name": name,
                "type": type(layer).__name__,
                "output_shape": out_shape[1:],
                "params": layer.count_params(),
                "macs": int(macs),
            }


def count_macs(model, breakdown=False):
    """Multiply-accumulates of `model` for one example.

    Args:
        model: a functional or built Sequential `keras.Model` with static
            spatial input dimensions (nested models are followed).
        breakdown: also return one row per counted layer call.

    Returns:
        The total as an int, or `(total, rows)` with `breakdown=True`; each row
        is a dict with `name` (nested layers as `outer/inner`), `type`,
        `output_shape` (without batch), `params` and `macs`.
        `format_macs_table(rows)` prints them.

    Example:

    >>> model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3)])
    >>> count_macs(model)  # 6 * 6 positions * 4 filters * 3 * 3 * 3
    3888
    """
    rows = list(_rows(model, ""))
    total = sum(row["macs"] for row in rows)
    return (total, rows) if breakdown else total


def format_macs_table(rows, total=None):
    """The per-layer rows of `count_macs(..., breakdown=True)` as a Markdown table.

    Args:
        rows: the rows.
        total: the total to print last (default: the sum of the rows).

    Returns:
        A string: one line per layer with its MACs and share of the total.
    """
    total = sum(r["macs"] for r in rows) if total is None else total
    lines = [
        "| layer | type | output shape | params | MACs | % |",
        "|---|---|---|---:|---:|---:|",
    ]
    for r in rows:
        share = 100.0 * r["macs"] / total if total else 0.0
        shape = "x".join(str(d) for d in r["output_shape"])
        lines.append(
            f"| {r['name']} | {r['type']} | {shape} | {r['params']:,} | {r['macs']:,} | {share:.1f} |"
        )
    lines.append(f"| **total** | | | | {total:,} | 100.0 |")
    return "\n".join(lines)
