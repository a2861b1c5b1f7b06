"""keras-bft: Butterfly Transform channel fusion for Keras 3, shipped to LiteRT.

`ButterflyFusion`, `ButterflyUniform`, `replace_pointwise` and `Distiller`
load (with Keras) on first access, so that `import keras_bft` and the
`keras-bft --help` command line stay instant. Accessing them, or importing
`keras_bft.layers`, registers the layers for `keras.saving.load_model`.
"""

import importlib

__version__ = "0.1.0"

__all__ = ["ButterflyFusion", "ButterflyUniform", "Distiller", "replace_pointwise", "__version__"]

_LAZY = {
    "ButterflyFusion": "keras_bft.layers.butterfly_fusion",
    "ButterflyUniform": "keras_bft.initializers",
    "Distiller": "keras_bft.models",
    "replace_pointwise": "keras_bft.models",
}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
