"""Initializers for butterfly stage kernels."""

import math
import random

import keras


@keras.saving.register_keras_serializable(package="keras_bft")
class ButterflyUniform(keras.initializers.Initializer):
    """Uniform stage init whose path product has the variance of a Glorot dense kernel.

    Each input reaches each output of a butterfly along exactly one path of
    `num_stages` stage weights, so the equivalent dense entry is a product of
    `num_stages` independent draws. Drawing each from `U(-s, s)` with
    `s = sqrt(3) * (2 / (fan_in + fan_out)) ** (1 / (2 * num_stages))` gives that
    product the variance `2 / (fan_in + fan_out)` that Keras' default
    `glorot_uniform` gives the Conv2D/Dense kernel it replaces (the paper's
    eq. 9 idea: match the product, not each factor).

    Args:
        num_stages: number of stages of the transform.
        fan_in: input channels of the equivalent dense matrix.
        fan_out: output channels of the equivalent dense matrix.
        seed: optional seed, as for Keras' random initializers.
    """

    def __init__(self, num_stages, fan_in, fan_out, seed=None):
        for name, value in (("num_stages", num_stages), ("fan_in", fan_in), ("fan_out", fan_out)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"`{name}` must be a positive integer. Received: {name}={value!r}"
                )
        self.num_stages = num_stages
        self.fan_in = fan_in
        self.fan_out = fan_out
        self.seed = seed
        self._generator = keras.random.SeedGenerator(seed) if seed is not None else None

    @property
    def limit(self):
        variance = 2.0 / (self.fan_in + self.fan_out)
        return math.sqrt(3.0) * variance ** (1.0 / (2 * self.num_stages))

    def __call__(self, shape, dtype=None):
        seed = self._generator
        if seed is None:
            # An integer seed per call, as Keras' unseeded initializers draw one: Keras' global
            # SeedGenerator, if first created while a subclassed model builds inside its
            # symbolic call, has no state. Python's `random` follows keras.utils.set_random_seed.
            seed = random.randint(1, 2**31 - 1)
        return keras.random.uniform(shape, minval=-self.limit, maxval=self.limit, dtype=dtype, seed=seed)

    def get_config(self):
        return {
            "num_stages": self.num_stages,
            "fan_in": self.fan_in,
            "fan_out": self.fan_out,
            "seed": self.seed,
        }
