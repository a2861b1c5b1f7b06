"""Model utilities: MAC counting."""

from keras_bft.utils.macs import count_macs
from keras_bft.utils.macs import format_macs_table

__all__ = ["count_macs", "format_macs_table"]
