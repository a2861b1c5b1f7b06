"""keras-bft: Butterfly Transform channel fusion for Keras 3, shipped to LiteRT.

`ButterflyFusion` and `ButterflyUniform` load (with Keras) on first access, so
that `import keras_bft` and the `keras-bft --help` command line stay instant.
Accessing them, or importing `keras_bft.layers`, registers the layers for
`keras.saving.load_model`.
"""

__version__ = "0.1.0"

__all__ = ["ButterflyFusion", "ButterflyUniform", "__version__"]


def __getattr__(name):
    if name == "ButterflyFusion":
        from keras_bft.layers.butterfly_fusion import ButterflyFusion

        return ButterflyFusion
    if name == "ButterflyUniform":
        from keras_bft.initializers import ButterflyUniform

        return ButterflyUniform
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
