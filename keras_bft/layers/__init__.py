"""Keras layers: the butterfly transform and the channel split / shuffle of ShuffleNetV2."""

from keras_bft.layers.butterfly_fusion import ButterflyFusion
from keras_bft.layers.butterfly_stages import ButterflyStages
from keras_bft.layers.channel import ChannelShuffle
from keras_bft.layers.channel import ChannelSplit
from keras_bft.layers.data_format import channel_axis
from keras_bft.layers.data_format import standardize_data_format

__all__ = [
    "ButterflyFusion",
    "ButterflyStages",
    "ChannelShuffle",
    "ChannelSplit",
    "channel_axis",
    "standardize_data_format",
]
