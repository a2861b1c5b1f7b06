"""MobileNetV1/V2/V3 and ShuffleNetV2 whose channel-fusion 1x1 convs are butterfly transforms.

Every builder takes keras.applications' arguments plus `fusion`
(`"butterfly"` or `"pointwise"`, the plain twin) and the butterfly plan
arguments; see docs/applications.md for which layers become butterflies.
"""

from keras_bft.layers.channel import ChannelShuffle
from keras_bft.layers.channel import ChannelSplit
from keras_bft.applications.mobilenet_v1 import MobileNetV1BFT
from keras_bft.applications.mobilenet_v2 import MobileNetV2BFT
from keras_bft.applications.mobilenet_v3 import MobileNetV3LargeBFT
from keras_bft.applications.mobilenet_v3 import MobileNetV3SmallBFT
from keras_bft.applications.shufflenet_v2 import ShuffleNetV2BFT

__all__ = [
    "ChannelShuffle",
    "ChannelSplit",
    "MobileNetV1BFT",
    "MobileNetV2BFT",
    "MobileNetV3LargeBFT",
    "MobileNetV3SmallBFT",
    "ShuffleNetV2BFT",
]
