"""ShuffleNetV2 (Ma et al. 2018) with butterfly channel fusion.

BFT replaces the 1x1 convs of both branches of every unit
(`stageS_unitU_pointwise_1`, `_pointwise_2`, and `_proj_pointwise` in the
downsampling units) and by default the last 1x1 conv `conv5` (464 -> 1024 at
1.0x; `fuse_head=False` keeps it dense). The stem conv and the classifier
(`predictions`, a Dense layer) stay dense. Channel split and shuffle are the
registered layers `ChannelSplit` and `ChannelShuffle`.

keras.applications has no ShuffleNetV2; with `fusion="pointwise"` this is the
network of the paper's architecture table (Conv 3x3/2 24, MaxPool 3x3/2, stages of 4/8/4
units, Conv 1x1, global pool, FC), whose parameter and FLOP counts the tests
hold it to. Widths 0.5/1.0/1.5/2.0 use the paper's channel table; other widths
scale the 1.0x channels (116/232/464) and round them to even numbers, with
`conv5` 1024 up to 1.5x and 2048 above. BN follows the reference
implementations (epsilon 1e-5, momentum 0.9). Inputs are expected in [-1, 1]
or normalized like ImageNet; there is no preprocessing layer.
"""

import keras
from keras import layers

from keras_bft.applications import blocks
from keras_bft.ops import arguments

# keras.applications has no ShuffleNetV2: inputs scaled to [-1, 1] as for the
# MobileNets, and ImageNet decoding.
preprocess_input = keras.applications.mobilenet_v2.preprocess_input
decode_predictions = keras.applications.imagenet_utils.decode_predictions

_STAGE_UNITS = (4, 8, 4)
_STEM = 24
# Output channels of stages 2, 3, 4 and of conv5 for the paper's widths.
_CHANNELS = {
    0.5: (48, 96, 192, 1024),
    1.0: (116, 232, 464, 1024),
    1.5: (176, 352, 704, 1024),
    2.0: (244, 488, 976, 2048),
}


def stage_channels(width):
    """Output channels of stages 2-4 and conv5 at `width`."""
    if width in _CHANNELS:
        return _CHANNELS[width]
    stages = tuple(2 * max(1, round(c * width / 2)) for c in _CHANNELS[1.0][:3])
    return (*stages, 1024 if width <= 1.5 else 2048)


def ShuffleNetV2BFT(
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
    dropout=0.0,
    alpha=None,
    select=None,
    rectangular="min",
):
    """Instantiates ShuffleNetV2 whose branch 1x1 convs are butterfly transforms.

    Args:
{common}
        fuse_head: whether the last 1x1 conv `conv5` is a butterfly too (with
            `fusion="butterfly"`).
        dropout: dropout rate before the classifier (default none, as in the
            paper).

    Returns:
        A `keras.Model`.

    Example:

    >>> model = ShuffleNetV2BFT(input_shape=(64, 64, 3), width=0.5, classes=10)
    >>> model.get_layer("stage2_unit2_pointwise_1").__class__.__name__
    'ButterflyFusion'
    """
    width = blocks.check_common_args(width, alpha, include_top, weights, pooling, classes)
    spec = blocks.fusion_spec(fusion, butterfly_k, radices, num_stages, select, rectangular)
    arguments.boolean("fuse_head", fuse_head)
    dropout = blocks.check_rate("dropout", dropout)
    image, inputs, rows = blocks.image_input(
        input_shape, input_tensor, default_size=224 if include_top else None
    )
    *stages, last = stage_channels(width)
    if stages[0] <= _STEM:
        # A downsampling unit keeps its C input channels on the left branch.
        raise ValueError(
            f"`width` is too small for ShuffleNetV2: it gives stage 2 {stages[0]} output channels, "
            f"which must exceed the {_STEM} channels of the stem (width 0.22 and above work). "
            f"Received: width={width!r}"
        )

    x = blocks.conv_bn(image, _STEM, 3, 2, "conv1", "conv1_bn", blocks.BN_SHUFFLE)
    x = blocks.activation(x, "relu", "conv1")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="maxpool")(x)
    for stage, (channels, units) in enumerate(zip(stages, _STAGE_UNITS), start=2):
        for unit in range(1, units + 1):
            x = blocks.shuffle_unit(x, channels, 2 if unit == 1 else 1, f"stage{stage}_unit{unit}_", spec)
    head_spec = spec if fuse_head else blocks.fusion_spec("pointwise")
    x = blocks.fusion_1x1(x, last, head_spec, "conv5")
    x = blocks.batch_norm(x, "conv5_bn", blocks.BN_SHUFFLE)
    x = blocks.activation(x, "relu", "conv5")

    if include_top:
        x = blocks.dense_classifier(x, classes, classifier_activation, dropout)
    else:
        x = blocks.pooled(x, pooling)
    name = name or blocks.default_name("shufflenet_v2", fusion, width, rows)
    return blocks.finish_model(inputs, x, name, weights, spec)


ShuffleNetV2BFT.__doc__ = ShuffleNetV2BFT.__doc__.format(common=blocks.COMMON_ARGS_DOC)
