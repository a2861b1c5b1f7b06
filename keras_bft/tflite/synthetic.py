"""Trained-like BatchNorm statistics for untrained models, so their int8 ranges look like a trained model's."""

import keras
import numpy as np


def randomize_batchnorm(model, seed=0):
    """Gives every BatchNormalization of `model` random gamma/beta/mean/variance near 1/0/0/1.

    Freshly initialized models (gamma=1, variance=1 with He-initialized convs)
    shrink activations layer after layer; in deep MobileNetV3s they reach ~1e-6,
    and int8 requantization scales that small make XNNPACK reject ops. Benchmarks
    and conversion tests on untrained models use this instead. Returns `model`.
    """
    rng = np.random.default_rng(seed)
    for layer in _all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = (w.shape for w in layer.get_weights())
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, gamma).astype("float32"),
                    rng.uniform(-0.2, 0.2, beta).astype("float32"),
                    rng.uniform(-0.2, 0.2, mean).astype("float32"),
                    rng.uniform(0.5, 1.5, var).astype("float32"),
                ]
            )
    return model


def _all_layers(model):
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _all_layers(layer)
