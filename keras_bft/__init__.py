"""keras-bft: Butterfly Transform channel fusion for Keras 3, shipped to LiteRT."""

from keras_bft.initializers import ButterflyUniform
from keras_bft.layers.butterfly_fusion import ButterflyFusion

__version__ = "0.1.0"

__all__ = ["ButterflyFusion", "ButterflyUniform", "__version__"]
