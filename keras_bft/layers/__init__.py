from keras_bft.layers.butterfly_fusion import ButterflyFusion

__all__ = ["ButterflyFusion"]
