"""The data_format argument of keras_bft layers: one check, one channel axis."""

import keras

DATA_FORMATS = ("channels_last", "channels_first")


def standardize_data_format(data_format):
    """`data_format`, or `keras.config.image_data_format()` for None; raises on anything else.

    Args:
        data_format: `"channels_last"`, `"channels_first"` or None.

    Returns:
        The data format as a string.
    """
    if data_format is None:
        data_format = keras.config.image_data_format()
    if data_format not in DATA_FORMATS:
        raise ValueError(
            f"`data_format` must be one of {DATA_FORMATS}. Received: data_format={data_format!r}"
        )
    return data_format


def channel_axis(data_format, rank):
    """The channel axis of a rank-`rank` tensor: 1 for channels_first images, else -1.

    Rank-2 inputs (batch, features) always have their channels last.
    """
    return 1 if data_format == "channels_first" and rank >= 3 else -1
