"""MobileNetV1 (Howard et al. 2017) with butterfly channel fusion.

BFT replaces all 13 pointwise convs `conv_pw_1` ... `conv_pw_13`: the paper's
MobileNetV1+BFT. The stem conv (3x3) and the classifier (`conv_preds`, a 1x1
conv on the pooled 1x1 map, i.e. a Dense layer) stay dense. With
`fusion="pointwise"` the model is keras.applications.MobileNet layer for layer
(same names, shapes and parameter count).
"""

import keras
from keras import layers

from keras_bft.applications import blocks
from keras_bft.ops import arguments

# The same input scaling and ImageNet decoding as keras.applications.mobilenet.
preprocess_input = keras.applications.mobilenet.preprocess_input
decode_predictions = keras.applications.mobilenet.decode_predictions

# (pointwise filters at width 1.0, depthwise stride) of conv blocks 1..13.
_BLOCKS = (
    (64, 1),
    (128, 2),
    (128, 1),
    (256, 2),
    (256, 1),
    (512, 2),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (512, 1),
    (1024, 2),
    (1024, 1),
)


def MobileNetV1BFT(
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
    depth_multiplier=1,
    dropout=1e-3,
    alpha=None,
    select=None,
    rectangular="min",
):
    """Instantiates MobileNetV1 whose pointwise convs are butterfly transforms.

    Args:
{common}
        depth_multiplier: channel multiplier of the depthwise convs.
        dropout: dropout rate before the classifier.

    Returns:
        A `keras.Model`.

    Example:

    >>> model = MobileNetV1BFT(input_shape=(64, 64, 3), width=0.25, classes=10)
    >>> model.get_layer("conv_pw_13").__class__.__name__
    'ButterflyFusion'
    """
    width = blocks.check_common_args(width, alpha, include_top, weights, pooling, classes)
    spec = blocks.fusion_spec(fusion, butterfly_k, radices, num_stages, select, rectangular)
    depth_multiplier = arguments.positive_int("depth_multiplier", depth_multiplier)
    if int(32 * width) < 1:
        raise ValueError(
            "`width` must be at least 1/32 for MobileNetV1 (its stem has int(32 * width) filters). "
            f"Received: width={width!r}"
        )
    dropout = blocks.check_rate("dropout", dropout)
    image, inputs, rows = blocks.image_input(
        input_shape, input_tensor, default_size=224 if include_top else None
    )

    x = blocks.conv_bn(image, int(32 * width), 3, 2, "conv1", "conv1_bn", blocks.BN_V1)
    x = blocks.activation(x, "relu6", "conv1")
    for block_id, (filters, stride) in enumerate(_BLOCKS, start=1):
        x = blocks.separable_block(x, int(filters * width), stride, block_id, spec, depth_multiplier)

    if include_top:
        x = layers.GlobalAveragePooling2D(keepdims=True, name="global_average_pooling")(x)
        x = blocks.conv_classifier(x, classes, classifier_activation, dropout, "conv_preds", "reshape_2")
    else:
        x = blocks.pooled(x, pooling)
    name = name or blocks.default_name("mobilenet_v1", fusion, width, rows)
    return blocks.finish_model(inputs, x, name, weights, spec)


MobileNetV1BFT.__doc__ = MobileNetV1BFT.__doc__.format(common=blocks.COMMON_ARGS_DOC)
