"""keras-bft: Butterfly Transform channel fusion for Keras 3, shipped to LiteRT."""

from keras_bft.initializers import ButterflyUniform
from keras_bft.layers.butterfly_fusion import ButterflyFusion
from keras_bft.models import Distiller
from keras_bft.models import replace_pointwise

__version__ = "0.1.0"

__all__ = ["ButterflyFusion", "ButterflyUniform", "Distiller", "replace_pointwise", "__version__"]
