"""Channel split and channel shuffle (ShuffleNetV2's data movement), as registered Keras layers.

Both are pure data movement written in `keras.ops`, so they run on every
backend, serialize with `get_config`, and load with `safe_mode=True` (a
`Lambda` would not). Their registered names (`keras_bft>ChannelSplit`,
`keras_bft>ChannelShuffle`) are those of the files saved when they lived in
`keras_bft.applications`, which still re-exports them.
"""

import keras
from keras import ops

from keras_bft.layers.data_format import channel_axis
from keras_bft.layers.data_format import standardize_data_format


@keras.saving.register_keras_serializable(package="keras_bft")
class ChannelSplit(keras.layers.Layer):
    """Splits the channel axis into two parts: the first `split` channels and the rest.

    ShuffleNetV2's unit sends the first half of its channels around the block
    unchanged and the second half through the branch.

    Args:
        split: number of channels in the first part; default half of the
            input's channels (which must then be even).
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Returns:
        A list of two tensors.

    Example:

    >>> a, b = ChannelSplit()(np.zeros((1, 4, 4, 6)))
    >>> tuple(a.shape), tuple(b.shape)
    ((1, 4, 4, 3), (1, 4, 4, 3))
    """

    def __init__(self, split=None, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if split is not None and (not isinstance(split, int) or split < 1):
            raise ValueError(f"`split` must be a positive integer. Received: split={split!r}")
        self.split = split
        self.data_format = standardize_data_format(data_format)

    def split_sizes(self, input_shape):
        """`(channel axis, channels of the first part, channels)` for an input of `input_shape`."""
        axis = channel_axis(self.data_format, len(input_shape))
        channels = input_shape[axis]
        if channels is None:
            raise ValueError(
                f"ChannelSplit needs a known channel dimension. Received: input_shape={input_shape}"
            )
        if self.split is None:
            if channels % 2:
                raise ValueError(
                    "ChannelSplit with split=None needs an even number of channels. "
                    f"Received: input_shape={input_shape}"
                )
            first = channels // 2
        else:
            first = self.split
        if not 0 < first < channels:
            raise ValueError(
                f"`split` must be between 1 and channels - 1 = {channels - 1}. "
                f"Received: split={first}"
            )
        return axis, first, channels

    def call(self, inputs):
        axis, first, _ = self.split_sizes(inputs.shape)
        left, right = ops.split(inputs, [first], axis=axis)
        return [left, right]

    def compute_output_shape(self, input_shape):
        axis, first, channels = self.split_sizes(input_shape)
        left, right = list(input_shape), list(input_shape)
        left[axis], right[axis] = first, channels - first
        return [tuple(left), tuple(right)]

    def get_config(self):
        config = super().get_config()
        config.update({"split": self.split, "data_format": self.data_format})
        return config


@keras.saving.register_keras_serializable(package="keras_bft")
class ChannelShuffle(keras.layers.Layer):
    """Channel shuffle: views the channels as `(groups, channels / groups)` and transposes.

    Channel `g * (C / groups) + j` moves to `j * groups + g`, so consecutive
    output channels come from different groups (ShuffleNet, Zhang et al. 2018).

    Args:
        groups: number of groups (default 2, as in ShuffleNetV2).
        data_format: `"channels_last"` or `"channels_first"`; defaults to
            `keras.config.image_data_format()`.
        **kwargs: base layer arguments (`name`, `dtype`, ...).

    Example:

    >>> x = np.arange(6, dtype="float32").reshape(1, 1, 1, 6)
    >>> keras.ops.convert_to_numpy(ChannelShuffle(groups=2)(x)).ravel().tolist()
    [0.0, 3.0, 1.0, 4.0, 2.0, 5.0]
    """

    def __init__(self, groups=2, data_format=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(groups, int) or groups < 1:
            raise ValueError(f"`groups` must be a positive integer. Received: groups={groups!r}")
        self.groups = groups
        self.data_format = standardize_data_format(data_format)

    def build(self, input_shape):
        channels = input_shape[channel_axis(self.data_format, len(input_shape))]
        if channels is None or channels % self.groups:
            raise ValueError(
                f"ChannelShuffle needs channels divisible by groups={self.groups}. "
                f"Received: input_shape={input_shape}"
            )

    def call(self, inputs):
        if self.data_format == "channels_first":
            inputs = ops.moveaxis(inputs, 1, -1)
        channels = inputs.shape[-1]
        lead = ops.shape(inputs)[:-1]
        x = ops.reshape(inputs, (-1, self.groups, channels // self.groups))
        x = ops.transpose(x, (0, 2, 1))
        x = ops.reshape(x, (*lead, channels))
        if self.data_format == "channels_first":
            x = ops.moveaxis(x, -1, 1)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update({"groups": self.groups, "data_format": self.data_format})
        return config
