"""Hard-swish and hard-sigmoid as the int8 ops LiteRT's XNNPACK delegate runs.

XNNPACK has no int8 HARD_SWISH kernel, and the TFLite converter folds
`x * relu6(x + 3) / 6` back into HARD_SWISH. Scaling `x` first escapes that
pattern: `(x / 6) * relu6(x + 3)` converts to MUL, ADD (with a fused RELU6),
MUL, all delegated in int8. The exporter uses these functions plain;
quantization-aware training passes `observe` to fake-quantize each
intermediate tensor of that int8 graph.
"""

from keras import ops


def _plain(name, x):
    return x


def hard_sigmoid(x, observe=None):
    """`relu6(x + 3) / 6` (Keras' hard_sigmoid): ADD (+RELU6), MUL.

    Args:
        x: a tensor.
        observe: optional `f(name, tensor) -> tensor` applied to the
            intermediate `"gate"` tensor `relu6(x + 3)`.

    Returns:
        The hard sigmoid of `x`.
    """
    observe = observe or _plain
    return observe("gate", ops.relu6(x + 3.0)) * (1.0 / 6.0)


def hard_swish(x, observe=None):
    """`(x / 6) * relu6(x + 3)`: Keras' hard_swish as MUL, ADD (+RELU6), MUL.

    Args:
        x: a tensor.
        observe: optional `f(name, tensor) -> tensor` applied to the
            intermediate tensors `"gate"` (`relu6(x + 3)`) and `"scaled"`
            (`x / 6`).

    Returns:
        The hard swish of `x`.
    """
    observe = observe or _plain
    gate = observe("gate", ops.relu6(x + 3.0))
    return observe("scaled", x * (1.0 / 6.0)) * gate
