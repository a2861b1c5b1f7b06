"""Kept for imports written before the channel layers moved to `keras_bft.layers`."""

from keras_bft.layers.channel import ChannelShuffle
from keras_bft.layers.channel import ChannelSplit

__all__ = ["ChannelShuffle", "ChannelSplit"]
