"""MobileNetV2 (Sandler et al. 2018) with butterfly channel fusion.

BFT replaces every expand (`block_N_expand`) and project (`block_N_project`,
`expanded_conv_project`) 1x1 conv, and by default the last 1x1 conv `Conv_1`
(320 -> 1280 channels on the final feature map, 7% of the MACs at 224: it is
channel fusion like the others). `fuse_head=False` keeps `Conv_1` dense. The
classifier (`predictions`, a Dense layer) stays dense. With
`fusion="pointwise"` the model is keras.applications.MobileNetV2 layer for
layer (same names, shapes and parameter count).
"""

import keras
from keras import layers

from keras_bft.applications import blocks
from keras_bft.ops import arguments

# The same input scaling and ImageNet decoding as keras.applications.mobilenet_v2.
preprocess_input = keras.applications.mobilenet_v2.preprocess_input
decode_predictions = keras.applications.mobilenet_v2.decode_predictions

# (expansion, output filters at width 1.0, stride) of blocks 0..16.
_BLOCKS = (
    (1, 16, 1),
    (6, 24, 2),
    (6, 24, 1),
    (6, 32, 2),
    (6, 32, 1),
    (6, 32, 1),
    (6, 64, 2),
    (6, 64, 1),
    (6, 64, 1),
    (6, 64, 1),
    (6, 96, 1),
    (6, 96, 1),
    (6, 96, 1),
    (6, 160, 2),
    (6, 160, 1),
    (6, 160, 1),
    (6, 320, 1),
)


def MobileNetV2BFT(
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
    fuse_head=True,
    alpha=None,
    select=None,
    rectangular="min",
):
    """Instantiates MobileNetV2 whose expand/project 1x1 convs are butterfly transforms.

    Args:
{common}
        fuse_head: whether the last 1x1 conv `Conv_1` is a butterfly too (with
            `fusion="butterfly"`).

    Returns:
        A `keras.Model`.

    Example:

    >>> model = MobileNetV2BFT(input_shape=(64, 64, 3), width=0.35, classes=10)
    >>> model.get_layer("block_3_expand").__class__.__name__
    'ButterflyFusion'
    """
    width = blocks.check_common_args(width, alpha, include_top, weights, pooling, classes)
    spec = blocks.fusion_spec(fusion, butterfly_k, radices, num_stages, select, rectangular)
    arguments.boolean("fuse_head", fuse_head)
    image, inputs, rows = blocks.image_input(
        input_shape, input_tensor, default_size=224 if include_top else None
    )
    axis = blocks.channel_axis()

    x = blocks.conv_bn(
        image, blocks.make_divisible(32 * width, 8), 3, 2, "Conv1", "bn_Conv1", blocks.BN_V2
    )
    x = blocks.activation(x, "relu6", "Conv1")
    for block_id, (expansion, filters, stride) in enumerate(_BLOCKS):
        prefix = f"block_{block_id}_" if block_id else "expanded_conv_"
        expanded = expansion * x.shape[axis] if block_id else None
        x = blocks.inverted_residual(
            x, expanded, blocks.make_divisible(int(filters * width), 8), 3, stride, "relu6",
            prefix, spec, blocks.STYLE_V2,
        )
    # As in the paper, the last conv widens with width > 1 only.
    last = blocks.make_divisible(1280 * width, 8) if width > 1.0 else 1280
    head_spec = spec if fuse_head else blocks.fusion_spec("pointwise")
    x = blocks.fusion_1x1(x, last, head_spec, "Conv_1")
    x = blocks.batch_norm(x, "Conv_1_bn", blocks.BN_V2)
    x = layers.ReLU(6.0, name="out_relu")(x)

    if include_top:
        x = blocks.dense_classifier(x, classes, classifier_activation)
    else:
        x = blocks.pooled(x, pooling)
    name = name or blocks.default_name("mobilenet_v2", fusion, width, rows)
    return blocks.finish_model(inputs, x, name, weights, spec)


MobileNetV2BFT.__doc__ = MobileNetV2BFT.__doc__.format(common=blocks.COMMON_ARGS_DOC)
