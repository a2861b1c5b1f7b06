"""MobileNetV3-Small and -Large (Howard et al. 2019) with butterfly channel fusion.

BFT replaces every expand (`expanded_conv_N_expand`) and project
(`expanded_conv_N_project`) 1x1 conv, and by default the last 1x1 conv on the
feature map, `conv_1` (`fuse_head=False` keeps it dense). Dense stay: the
squeeze-excite 1x1s (on a 1x1 pooled map, <1% of the MACs), `conv_2` (a 1x1
conv on the pooled map, i.e. a hidden Dense layer) and the classifier
`logits`. With `fusion="pointwise"` the model is
keras.applications.MobileNetV3Small/Large layer for layer (same names for all
layers with weights, same shapes and parameter count).

`include_preprocessing=True` (the default, as in keras.applications) starts
the model with `Rescaling(1 / 127.5, offset=-1)`: it takes pixels in
[0, 255] and feeds [-1, 1] to the network. With `False`, feed [-1, 1] yourself.
"""

import keras
from keras import layers

from keras_bft.applications import blocks
from keras_bft.ops import arguments

# The same input scaling and ImageNet decoding as keras.applications.mobilenet_v3.
preprocess_input = keras.applications.mobilenet_v3.preprocess_input
decode_predictions = keras.applications.mobilenet_v3.decode_predictions

# (expansion, filters at width 1.0, kernel, stride, squeeze-excite, activation).
# kernel "k" is 5 (3 when minimalistic); "hs" is hard-swish (ReLU when minimalistic).
_SMALL = (
    (1, 16, 3, 2, True, "relu"),
    (72 / 16, 24, 3, 2, False, "relu"),
    (88 / 24, 24, 3, 1, False, "relu"),
    (4, 40, "k", 2, True, "hs"),
    (6, 40, "k", 1, True, "hs"),
    (6, 40, "k", 1, True, "hs"),
    (3, 48, "k", 1, True, "hs"),
    (3, 48, "k", 1, True, "hs"),
    (6, 96, "k", 2, True, "hs"),
    (6, 96, "k", 1, True, "hs"),
    (6, 96, "k", 1, True, "hs"),
)
_LARGE = (
    (1, 16, 3, 1, False, "relu"),
    (4, 24, 3, 2, False, "relu"),
    (3, 24, 3, 1, False, "relu"),
    (3, 40, "k", 2, True, "relu"),
    (3, 40, "k", 1, True, "relu"),
    (3, 40, "k", 1, True, "relu"),
    (6, 80, 3, 2, False, "hs"),
    (2.5, 80, 3, 1, False, "hs"),
    (2.3, 80, 3, 1, False, "hs"),
    (2.3, 80, 3, 1, False, "hs"),
    (6, 112, 3, 1, True, "hs"),
    (6, 112, 3, 1, True, "hs"),
    (6, 160, "k", 2, True, "hs"),
    (6, 160, "k", 1, True, "hs"),
    (6, 160, "k", 1, True, "hs"),
)


def _mobilenet_v3(
    table, last_point, family, input_shape, width, include_top, weights, input_tensor,
    pooling, classes, classifier_activation, fusion, butterfly_k, radices, num_stages, name,
    minimalistic, include_preprocessing, dropout, fuse_head, alpha, dropout_rate, select, rectangular,
):
    width = blocks.check_common_args(width, alpha, include_top, weights, pooling, classes)
    spec = blocks.fusion_spec(fusion, butterfly_k, radices, num_stages, select, rectangular)
    for arg, value in (
        ("minimalistic", minimalistic),
        ("include_preprocessing", include_preprocessing),
        ("fuse_head", fuse_head),
    ):
        arguments.boolean(arg, value)
    dropout = blocks.dropout_alias(dropout, dropout_rate, default=0.2)
    image, inputs, rows = blocks.image_input(input_shape, input_tensor, default_size=None)
    axis = blocks.channel_axis()
    act_main = "relu" if minimalistic else "hard_swish"

    x = image
    if include_preprocessing:
        x = layers.Rescaling(scale=1.0 / 127.5, offset=-1.0, name="rescaling")(x)
    x = blocks.conv_bn(x, 16, 3, 2, "conv", "conv_bn", blocks.BN_V2)
    x = blocks.activation(x, act_main, "conv")
    for block_id, (expansion, filters, kernel, stride, se, act) in enumerate(table):
        in_channels = x.shape[axis]
        expanded = blocks.make_divisible(in_channels * expansion)
        prefix = f"expanded_conv_{block_id}_" if block_id else "expanded_conv_"
        x = blocks.inverted_residual(
            x,
            expanded if block_id else None,
            blocks.make_divisible(filters * width),
            3 if kernel == "k" and minimalistic else (5 if kernel == "k" else kernel),
            stride,
            act_main if act == "hs" else "relu",
            prefix,
            spec,
            blocks.STYLE_V3,
            se_squeezed=None if minimalistic or not se else blocks.make_divisible(expanded * 0.25),
        )
    head_spec = spec if fuse_head else blocks.fusion_spec("pointwise")
    x = blocks.fusion_1x1(x, blocks.make_divisible(x.shape[axis] * 6), head_spec, "conv_1")
    x = blocks.batch_norm(x, "conv_1_bn", blocks.BN_V2)
    x = blocks.activation(x, act_main, "conv_1")

    if include_top:
        if width > 1.0:
            last_point = blocks.make_divisible(last_point * width)
        x = layers.GlobalAveragePooling2D(keepdims=True, name="global_average_pooling")(x)
        x = layers.Conv2D(last_point, 1, padding="same", use_bias=True, name="conv_2")(x)
        x = blocks.activation(x, act_main, "conv_2")
        x = blocks.conv_classifier(x, classes, classifier_activation, dropout, "logits", "flatten")
    else:
        x = blocks.pooled(x, pooling)
    name = name or blocks.default_name(family, fusion, width, rows)
    return blocks.finish_model(inputs, x, name, weights, spec)


_V3_DOC = """Instantiates MobileNetV3-{size} whose expand/project 1x1 convs are butterfly transforms.

    Args:
{common}
        minimalistic: the keras.applications variant without squeeze-excite,
            hard-swish and 5x5 kernels (ReLU and 3x3 everywhere).
        include_preprocessing: start with `Rescaling(1/127.5, offset=-1)`,
            so the model takes pixels in [0, 255] (the keras.applications
            default).
        dropout: dropout rate before the classifier (default 0.2; also
            accepted as keras.applications' `dropout_rate=`).
        fuse_head: whether the last 1x1 conv on the feature map, `conv_1`, is
            a butterfly too (with `fusion="butterfly"`).

    Returns:
        A `keras.Model`.

    Example:

    >>> model = MobileNetV3{size}BFT(input_shape=(64, 64, 3), classes=10)
    >>> model.get_layer("expanded_conv_1_project").__class__.__name__
    'ButterflyFusion'
    """


def MobileNetV3SmallBFT(
    input_shape=None,
    width=None,
    include_top=True,
    weights=None,
    input_tensor=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    fusion="butterfly",
    butterfly_k=4,
    radices=None,
    num_stages=None,
    name=None,
    *,
    minimalistic=False,
    include_preprocessing=True,
    dropout=None,
    fuse_head=True,
    alpha=None,
    dropout_rate=None,
    select=None,
    rectangular="min",
):
    return _mobilenet_v3(
        _SMALL, 1024, "mobilenet_v3_small", input_shape, width, include_top, weights,
        input_tensor, pooling, classes, classifier_activation, fusion, butterfly_k, radices,
        num_stages, name, minimalistic, include_preprocessing, dropout, fuse_head, alpha,
        dropout_rate, select, rectangular,
    )


def MobileNetV3LargeBFT(
    input_shape=None,
    width=None,
    include_top=True,
    weights=None,
    input_tensor=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    fusion="butterfly",
    butterfly_k=4,
    radices=None,
    num_stages=None,
    name=None,
    *,
    minimalistic=False,
    include_preprocessing=True,
    dropout=None,
    fuse_head=True,
    alpha=None,
    dropout_rate=None,
    select=None,
    rectangular="min",
):
    return _mobilenet_v3(
        _LARGE, 1280, "mobilenet_v3_large", input_shape, width, include_top, weights,
        input_tensor, pooling, classes, classifier_activation, fusion, butterfly_k, radices,
        num_stages, name, minimalistic, include_preprocessing, dropout, fuse_head, alpha,
        dropout_rate, select, rectangular,
    )


MobileNetV3SmallBFT.__doc__ = _V3_DOC.format(size="Small", common=blocks.COMMON_ARGS_DOC)
MobileNetV3LargeBFT.__doc__ = _V3_DOC.format(size="Large", common=blocks.COMMON_ARGS_DOC)
