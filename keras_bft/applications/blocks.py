"""The block library every builder in `keras_bft.applications` is made of.

The families (MobileNetV1/V2/V3, ShuffleNetV2) differ only in their tables of
stages; the blocks, the input handling, the argument checks and the heads live
here once. Layer names follow keras.applications (`conv_pw_1`,
`block_3_expand`, `expanded_conv_2_project`, ...), and a `ButterflyFusion`
takes the name of the 1x1 conv it replaces, so the same code finds the same
layer in both twins.

What becomes a butterfly (`fusion="butterfly"`): every channel-fusion 1x1 conv
applied to a feature map, i.e. every call of `fusion_1x1`. Dense stays: the
squeeze-excite 1x1s (they act on a 1x1 pooled map, cost <1% of the MACs, and
their bottleneck is the point of SE), the 1x1 convs after global pooling and
the classifier (a classifier is not channel fusion, and the paper's networks
keep their FC layer). See docs/applications.md.
"""

import dataclasses
import os

import keras
from keras import layers

from keras_bft.applications.layers import ChannelShuffle
from keras_bft.applications.layers import ChannelSplit
from keras_bft.layers import data_format as data_format_lib
from keras_bft.layers.butterfly_fusion import ButterflyFusion
from keras_bft.ops import arguments
from keras_bft.ops import plans
from keras_bft.utils import selection

FUSIONS = ("butterfly", "pointwise")
POOLINGS = (None, "avg", "max")

# keras.applications' BatchNormalization settings per family.
BN_V1 = {"epsilon": 1e-3, "momentum": 0.99}
BN_V2 = {"epsilon": 1e-3, "momentum": 0.999}
BN_SHUFFLE = {"epsilon": 1e-5, "momentum": 0.9}

_ACTIVATIONS = {
    "relu": ("relu", lambda name: layers.ReLU(name=name)),
    "relu6": ("relu", lambda name: layers.ReLU(6.0, name=name)),
    "hard_swish": ("hard_swish", lambda name: layers.Activation("hard_swish", name=name)),
    "hard_sigmoid": ("hard_sigmoid", lambda name: layers.Activation("hard_sigmoid", name=name)),
}


def channel_axis():
    return data_format_lib.channel_axis(keras.config.image_data_format(), rank=4)


def make_divisible(value, divisor=8, min_value=None):
    """Rounds `value` to a multiple of `divisor`, never more than 10% down (the TF-slim rule)."""
    min_value = divisor if min_value is None else min_value
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


# ---------------------------------------------------------------- arguments


@dataclasses.dataclass(frozen=True)
class FusionSpec:
    """How `fusion_1x1` builds each channel-fusion layer of a network.

    `radices` is `None`, one tuple (every butterfly of the network must then
    span that many channels), or a dict `{channels: tuple}` giving the
    butterflies over `channels = min(in, filters)` their own radices (others
    use `butterfly_k` / `num_stages`).
    """

    fusion: str = "butterfly"
    butterfly_k: int = 4
    radices: object = None
    num_stages: int = None
    # Which fusion sites become butterflies (a `selection.Selection`; None: all).
    select: object = None
    rectangular: str = "min"

    def selects(self, in_channels, filters, name, kind="Conv2D", layer=None, path=None):
        """Whether the fusion site `name` becomes a butterfly."""
        if self.fusion == "pointwise":
            return False
        if self.select is None:
            return True
        return self.select(
            selection.PointwiseSite(name, path or name, int(in_channels), int(filters), kind, layer)
        )

    def butterfly(self, in_channels, filters, name, **kwargs):
        """The `ButterflyFusion` of this spec for one site (not yet called)."""
        radices = self.radices_for(in_channels, filters, name)
        return ButterflyFusion(
            filters,
            butterfly_k=self.butterfly_k,
            radices=radices,
            num_stages=self.num_stages if radices is None else None,
            rectangular=self.rectangular,
            name=name,
            **kwargs,
        )

    def radices_for(self, in_channels, filters, name):
        if self.radices is None:
            return None
        core = min(in_channels, filters)
        if isinstance(self.radices, dict):
            return self.radices.get(core)
        product = _product(self.radices)
        if product != core:
            raise ValueError(
                f"`radices`={list(self.radices)} (product {product}) only fits butterflies over "
                f"{product} channels, but layer {name!r} fuses {in_channels} -> {filters} channels "
                f"(a butterfly over min = {core}). A network has many widths: pass a dict "
                "{channels: radices} instead, or use `num_stages`. Received: "
                f"radices={list(self.radices)}"
            )
        return self.radices


def _product(values):
    out = 1
    for v in values:
        out *= v
    return out


def fusion_spec(fusion, butterfly_k=4, radices=None, num_stages=None, select=None, rectangular="min"):
    """Validates the fusion arguments of a builder and returns a `FusionSpec`.

    The butterfly arguments go through `keras_bft.ops.arguments`, the same
    check as `ButterflyFusion` and `make_plan`. `select` is a
    `selection.Selection`, or a user's `select` argument (None: every site).
    """
    if fusion not in FUSIONS:
        raise ValueError(f"`fusion` must be one of {FUSIONS}. Received: fusion={fusion!r}")
    butterfly_k, radices, num_stages = arguments.check_butterfly(
        butterfly_k, radices, num_stages, allow_dict=True
    )
    plans.check_rectangular(rectangular)
    if select is not None and not isinstance(select, selection.Selection):
        select = selection.Selection(select, default=selection.every_site)
    return FusionSpec(fusion, butterfly_k, radices, num_stages, select, rectangular)


def check_common_args(width, alpha, include_top, weights, pooling, classes):
    """Validates the keras.applications arguments; returns the width.

    `alpha` is keras.applications' name for `width` (default 1.0 when neither
    is given); passing both with different values is an error.
    """
    if width is None:
        width = 1.0 if alpha is None else alpha
        name = "width" if alpha is None else "alpha"
    elif alpha is not None and alpha != width:
        raise ValueError(
            "`alpha` is an alias of `width`; pass one of them. "
            f"Received: width={width!r}, alpha={alpha!r}"
        )
    else:
        name = "width"
    width = arguments.real(name, width, 0, low_open=True)
    arguments.boolean("include_top", include_top)
    if weights is not None:
        if not isinstance(weights, (str, os.PathLike)) or weights == "imagenet":
            raise ValueError(
                "`weights` must be None (random initialization) or the path to a weights file: "
                "there are no pretrained BFT weights to download. "
                f"Received: weights={weights!r}"
            )
        if not os.path.exists(weights):
            raise ValueError(f"`weights` is not an existing file. Received: weights={weights!r}")
    if pooling not in POOLINGS:
        raise ValueError(f"`pooling` must be one of {POOLINGS}. Received: pooling={pooling!r}")
    if not arguments.is_int(classes) or classes < 1:
        raise ValueError(f"`classes` must be a positive integer. Received: classes={classes!r}")
    return float(width)


def image_input(input_shape, input_tensor, default_size, min_size=32):
    """The model input: returns `(tensor to build on, model inputs, rows)`.

    `default_size=None` leaves the spatial size open (`(None, None, 3)`), as
    keras.applications does for MobileNetV3, and for the other families
    without their classifier.
    """
    channels_first = keras.config.image_data_format() == "channels_first"
    if input_tensor is not None:
        if not keras.backend.is_keras_tensor(input_tensor):
            raise ValueError(
                "`input_tensor` must be a Keras tensor (e.g. from `keras.Input`). "
                f"Received: input_tensor={input_tensor!r}"
            )
        input_shape = tuple(input_tensor.shape[1:])
    elif input_shape is None:
        input_shape = (3, default_size, default_size) if channels_first else (default_size, default_size, 3)
    shown = input_shape
    if (
        isinstance(input_shape, (str, bytes))
        or not hasattr(input_shape, "__len__")
        or len(input_shape) != 3
        or not all(d is None or (arguments.is_int(d) and d > 0) for d in input_shape)
    ):
        raise ValueError(
            "`input_shape` must be (rows, cols, channels) (channels_last) or "
            "(channels, rows, cols) (channels_first) of positive integers (None for an open "
            f"size). Received: input_shape={shown!r}"
        )
    input_shape = tuple(None if d is None else int(d) for d in input_shape)
    rows, cols = input_shape[1:] if channels_first else input_shape[:2]
    channels = input_shape[0] if channels_first else input_shape[2]
    if channels is None or any(d is not None and d < min_size for d in (rows, cols)):
        raise ValueError(
            f"`input_shape` needs a known channel count and rows and cols >= {min_size}. "
            f"Received: input_shape={shown!r}"
        )
    if input_tensor is not None:
        sources = keras.utils.get_source_inputs(input_tensor)
        return input_tensor, sources[0] if len(sources) == 1 else sources, rows
    tensor = layers.Input(shape=input_shape)
    return tensor, tensor, rows


def finish_model(inputs, outputs, name, weights, spec=None):
    """The `keras.Model`, with the weights file loaded when one is given.

    With `spec`, first checks that every layer name its `select` lists was a
    fusion site.
    """
    if spec is not None and spec.select is not None and spec.fusion == "butterfly":
        spec.select.check_names()
    model = keras.Model(inputs, outputs, name=name)
    if weights is not None:
        model.load_weights(weights)
    return model


def default_name(family, fusion, width, rows):
    size = "" if rows is None else f"_{rows}"
    return f"{family}_{'bft' if fusion == 'butterfly' else 'pointwise'}_{width:0.2f}{size}"


# ---------------------------------------------------------------- layers


def fusion_1x1(x, filters, spec, name):
    """A channel-fusion 1x1: `Conv2D(filters, 1, use_bias=False)` or a `ButterflyFusion`.

    Args:
        x: feature map.
        filters: output channels.
        spec: a `FusionSpec` (which fusion and sites; the butterfly plan
            arguments).
        name: layer name (the same in both twins).

    Returns:
        The output tensor (no BN, no activation: the caller adds them, as for
        the conv it replaces).
    """
    in_channels = x.shape[channel_axis()]
    if not spec.selects(in_channels, filters, name):
        return layers.Conv2D(filters, 1, padding="same", use_bias=False, name=name)(x)
    return spec.butterfly(in_channels, filters, name)(x)


def activation(x, kind, name_prefix):
    """`kind` in relu / relu6 / hard_swish / hard_sigmoid, named `{name_prefix}_{suffix}`.

    ReLU6 is suffixed `relu`, as in keras.applications.
    """
    suffix, make = _ACTIVATIONS[kind]
    return make(f"{name_prefix}_{suffix}")(x)


def batch_norm(x, name, bn):
    return layers.BatchNormalization(axis=channel_axis(), name=name, **bn)(x)


def conv_bn(x, filters, kernel_size, strides, name, bn_name, bn):
    """Dense (non-1x1 or stem) conv + BN, without bias."""
    x = layers.Conv2D(
        filters, kernel_size, strides=strides, padding="same", use_bias=False, name=name
    )(x)
    return batch_norm(x, bn_name, bn)


def stride2_padding(x, kernel_size):
    """keras.applications' `correct_pad`: pad so a valid stride-2 conv halves the size exactly."""
    spatial = x.shape[2:4] if channel_axis() == 1 else x.shape[1:3]
    adjust = (1, 1) if spatial[0] is None else (1 - spatial[0] % 2, 1 - spatial[1] % 2)
    half = kernel_size // 2
    return ((half - adjust[0], half), (half - adjust[1], half))


def depthwise_bn(x, kernel_size, strides, name, bn_name, bn, pad=None, pad_name=None, depth_multiplier=1):
    """Depthwise conv + BN. With `pad`, zero-pads explicitly and convolves 'valid'."""
    if pad is not None:
        x = layers.ZeroPadding2D(pad, name=pad_name)(x)
    x = layers.DepthwiseConv2D(
        kernel_size,
        strides=strides,
        padding="valid" if pad is not None else "same",
        depth_multiplier=depth_multiplier,
        use_bias=False,
        name=name,
    )(x)
    return batch_norm(x, bn_name, bn)


# ---------------------------------------------------------------- blocks


def separable_block(x, filters, strides, block_id, spec, depth_multiplier=1):
    """MobileNetV1's depthwise-separable block: dw 3x3, BN, ReLU6, fusion 1x1, BN, ReLU6."""
    pad = ((0, 1), (0, 1)) if strides == 2 else None
    x = depthwise_bn(
        x, 3, strides, f"conv_dw_{block_id}", f"conv_dw_{block_id}_bn", BN_V1,
        pad=pad, pad_name=f"conv_pad_{block_id}", depth_multiplier=depth_multiplier,
    )
    x = activation(x, "relu6", f"conv_dw_{block_id}")
    x = fusion_1x1(x, filters, spec, f"conv_pw_{block_id}")
    x = batch_norm(x, f"conv_pw_{block_id}_bn", BN_V1)
    return activation(x, "relu6", f"conv_pw_{block_id}")


@dataclasses.dataclass(frozen=True)
class InvertedResidualStyle:
    """keras.applications' naming of one inverted-residual family."""

    bn_suffix: str  # "BN" (V2) or "bn" (V3)
    pad_suffix: str  # "pad" (V2) or "depthwise_pad" (V3)


STYLE_V2 = InvertedResidualStyle("BN", "pad")
STYLE_V3 = InvertedResidualStyle("bn", "depthwise_pad")


def squeeze_excite(x, squeezed, prefix):
    """MobileNetV3's squeeze-excite: GAP, 1x1 (+bias) ReLU, 1x1 (+bias) hard-sigmoid, scale.

    Its 1x1s stay dense Conv2D in every fusion: they run on a 1x1 map.
    """
    filters = x.shape[channel_axis()]
    s = layers.GlobalAveragePooling2D(keepdims=True, name=f"{prefix}squeeze_excite_avg_pool")(x)
    s = layers.Conv2D(squeezed, 1, padding="same", name=f"{prefix}squeeze_excite_conv")(s)
    s = activation(s, "relu", f"{prefix}squeeze_excite")
    s = layers.Conv2D(filters, 1, padding="same", name=f"{prefix}squeeze_excite_conv_1")(s)
    s = activation(s, "hard_sigmoid", f"{prefix}squeeze_excite")
    return layers.Multiply(name=f"{prefix}squeeze_excite_mul")([x, s])


def inverted_residual(
    x, expanded, filters, kernel_size, stride, act, prefix, spec, style, bn=BN_V2, se_squeezed=None
):
    """MobileNetV2/V3's block: [fusion expand, BN, act], dw, BN, act, [SE], fusion project, BN, [+x].

    Args:
        expanded: channels after the expand 1x1, or None for no expand layer.
        filters: output channels of the project 1x1.
        act: activation kind ("relu6", "relu", "hard_swish").
        prefix: layer name prefix, e.g. "block_3_" or "expanded_conv_3_".
        se_squeezed: squeeze-excite bottleneck channels, or None for no SE.
    """
    shortcut = x
    in_channels = x.shape[channel_axis()]
    if expanded is not None:
        x = fusion_1x1(x, expanded, spec, f"{prefix}expand")
        x = batch_norm(x, f"{prefix}expand_{style.bn_suffix}", bn)
        x = activation(x, act, f"{prefix}expand")
    pad = stride2_padding(x, kernel_size) if stride == 2 else None
    x = depthwise_bn(
        x, kernel_size, stride, f"{prefix}depthwise", f"{prefix}depthwise_{style.bn_suffix}", bn,
        pad=pad, pad_name=f"{prefix}{style.pad_suffix}",
    )
    x = activation(x, act, f"{prefix}depthwise")
    if se_squeezed is not None:
        x = squeeze_excite(x, se_squeezed, prefix)
    x = fusion_1x1(x, filters, spec, f"{prefix}project")
    x = batch_norm(x, f"{prefix}project_{style.bn_suffix}", bn)
    if stride == 1 and in_channels == filters:
        x = layers.Add(name=f"{prefix}add")([shortcut, x])
    return x


def _fusion_bn_relu(x, filters, spec, name):
    x = fusion_1x1(x, filters, spec, name)
    x = batch_norm(x, f"{name}_bn", BN_SHUFFLE)
    return activation(x, "relu", name)


def shuffle_unit(x, out_channels, stride, prefix, spec):
    """ShuffleNetV2's unit (Ma et al. 2018, fig. 3c/3d), as in the authors' code.

    Stride 1: split the channels in half; the second half goes through
    fusion 1x1-BN-ReLU, dw 3x3-BN, fusion 1x1-BN-ReLU; concat; shuffle.
    Stride 2: both branches see all `C` input channels; the left one is
    dw 3x3/2-BN, fusion 1x1 (C -> C)-BN-ReLU, the right one ends with
    `out_channels - C` channels (out_channels / 2 wide inside). This is the
    authors' (megvii) unit, whose FLOPs the paper's table reports; it differs
    from torchvision's only in stage 2, where C = 24 != out_channels / 2.
    Every 1x1 is a `fusion_1x1`.
    """
    axis = channel_axis()
    if stride == 1:
        left, right = ChannelSplit(name=f"{prefix}split")(x)
    else:
        left = depthwise_bn(x, 3, 2, f"{prefix}proj_depthwise", f"{prefix}proj_depthwise_bn", BN_SHUFFLE)
        left = _fusion_bn_relu(left, x.shape[axis], spec, f"{prefix}proj_pointwise")
        right = x
    right = _fusion_bn_relu(right, out_channels // 2, spec, f"{prefix}pointwise_1")
    right = depthwise_bn(right, 3, stride, f"{prefix}depthwise", f"{prefix}depthwise_bn", BN_SHUFFLE)
    right = _fusion_bn_relu(right, out_channels - left.shape[axis], spec, f"{prefix}pointwise_2")
    x = layers.Concatenate(axis=axis, name=f"{prefix}concat")([left, right])
    return ChannelShuffle(2, name=f"{prefix}shuffle")(x)


# ---------------------------------------------------------------- heads


def pooled(x, pooling):
    """The `include_top=False` output: the feature map, or its global avg/max pool."""
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def conv_classifier(x, classes, classifier_activation, dropout, conv_name, flatten_name):
    """Dropout, a dense 1x1 conv with bias on a pooled `(1, 1, C)` map, flatten, activation."""
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    x = layers.Conv2D(classes, 1, padding="same", name=conv_name)(x)
    x = layers.Flatten(name=flatten_name)(x)
    return layers.Activation(classifier_activation, name="predictions")(x)


def dense_classifier(x, classes, classifier_activation, dropout=0.0):
    """Global average pool, [dropout], Dense with the classifier activation."""
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    return layers.Dense(classes, activation=classifier_activation, name="predictions")(x)


def dropout_alias(dropout, dropout_rate, default):
    """MobileNetV3's dropout: `dropout` or keras.applications' `dropout_rate`, not both differently."""
    if dropout is None:
        return default if dropout_rate is None else check_rate("dropout_rate", dropout_rate)
    if dropout_rate is not None and dropout_rate != dropout:
        raise ValueError(
            "`dropout_rate` is an alias of `dropout`; pass one of them. "
            f"Received: dropout={dropout!r}, dropout_rate={dropout_rate!r}"
        )
    return check_rate("dropout", dropout)


def check_rate(name, value):
    """A dropout rate in [0, 1)."""
    return arguments.real(name, value, 0, 1, high_open=True)


COMMON_ARGS_DOC = """        input_shape: optional `(rows, cols, channels)` (channels_last) or
            `(channels, rows, cols)`; rows and cols >= 32 (or None), any
            channel count. Default as in keras.applications: `(None, None, 3)`
            for MobileNetV3 and for every family without the classifier,
            else 224x224x3. Ignored when `input_tensor` is given.
        width: width multiplier of the channel counts (default 1.0;
            keras.applications' `alpha`, also accepted as `alpha=`; both with
            different values raise).
        include_top: whether to include the classifier.
        weights: `None` (random initialization) or the path of a weights file
            to load. There are no pretrained BFT weights: anything else, e.g.
            `"imagenet"`, raises a `ValueError`.
        input_tensor: optional Keras tensor to build the model on.
        pooling: with `include_top=False`: `None` (4D feature map), `"avg"` or
            `"max"` (global pooling to a 2D tensor).
        classes: number of classes of the classifier.
        classifier_activation: activation of the classifier (`None` for
            logits).
        fusion: `"butterfly"` (every channel-fusion 1x1 conv is a
            `ButterflyFusion`) or `"pointwise"` (plain `Conv2D` 1x1: the
            keras.applications network).
        butterfly_k: target radix of every `ButterflyFusion` (the paper's 4).
        radices: explicit stage radices. One list must multiply to
            `min(in, filters)` of *every* butterfly of the network, which only
            a network of one width allows; a dict `{channels: radices}` sets the
            radices of the butterflies over `channels` channels and leaves the
            others to `butterfly_k` / `num_stages`.
        num_stages: explicit number of stages of every `ButterflyFusion`.
        name: model name.
        select: which channel-fusion 1x1s become butterflies: `None` (all of
            them, the paper's models), a list of layer names, or a function
            of a `keras_bft.utils.selection.PointwiseSite` (name,
            in_channels, out_channels) returning a bool; the others stay
            `Conv2D` 1x1s. As in `keras_bft.replace_pointwise`.
        rectangular: how a butterfly with in != out channels is built:
            `"min"` (cost follows min(in, out)) or `"paper"` (the paper's
            square copies; see docs/applications.md).
        The butterfly arguments are ignored with `fusion="pointwise"`."""
