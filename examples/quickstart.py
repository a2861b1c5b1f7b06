"""ButterflyFusion in five minutes: Sequential, functional, and in place of Dense.

ButterflyFusion mixes the channel axis like a 1x1 Conv2D (or a Dense layer on
(N, C) input) at O(n log n) cost instead of O(n^2). Each model below is
trained for a moment on random data, and each layer is checked against the
dense matrix it is equivalent to (`layer.dense_kernel()`).

Run: python examples/quickstart.py [--steps 20]
"""

import argparse
import os
import tempfile

import keras
import numpy as np

import keras_bft


def sequential_cnn(classes=10):
    """A small CNN whose channel mixing is done by butterflies."""
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False),
            keras.layers.BatchNormalization(),
            keras.layers.ReLU(),
            keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False),
            # 32 -> 64 channels: a butterfly instead of Conv2D(64, 1).
            keras_bft.ButterflyFusion(64, butterfly_k=4, name="fusion"),
            keras.layers.BatchNormalization(),  # BN after the whole transform, as in the paper
            keras.layers.ReLU(),
            keras.layers.GlobalAveragePooling2D(),
            keras.layers.Dense(classes),
        ]
    )


def functional_block(channels=64):
    """A MobileNet-style depthwise-separable block with a butterfly and a residual."""
    inputs = keras.Input((16, 16, channels))
    x = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False)(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU()(x)
    x = keras_bft.ButterflyFusion(channels, radices=[8, 8], name="fusion")(x)  # 2 stages of 8
    x = keras.layers.BatchNormalization()(x)
    outputs = keras.layers.Add()([inputs, x])
    return keras.Model(inputs, outputs)


def mlp(features=256, classes=10):
    """In place of Dense on (N, C) input, as the BFT authors suggest for fully connected layers."""
    inputs = keras.Input((features,))
    x = keras_bft.ButterflyFusion(features, use_bias=True, activation="relu", name="fusion")(inputs)
    outputs = keras.layers.Dense(classes)(x)
    return keras.Model(inputs, outputs)


def check_against_dense(model, x):
    """The fusion layer computes exactly `inputs @ dense_kernel() (+ bias)`."""
    layer = model.get_layer("fusion")
    probe = keras.Model(model.inputs, [layer.input, layer.output])
    before, after = (np.asarray(t) for t in probe.predict(x, verbose=0))
    expected = before @ layer.dense_kernel()
    if layer.use_bias:
        expected = expected + np.asarray(layer.bias)
    if layer.activation is not None:
        expected = np.asarray(layer.activation(expected))
    np.testing.assert_allclose(after, expected, rtol=1e-4, atol=1e-4)
    n_in, n_out = layer.dense_kernel().shape
    stages = [tuple(k.shape) for k in layer.kernels]
    return f"{n_in}->{n_out} channels, stages {stages}, {layer.plan.macs} MACs per position vs {n_in * n_out} dense"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="training steps per model")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)

    models = {}
    for name, model, x_shape, y_fn in (
        ("Sequential CNN", sequential_cnn(), (32, 32, 3), lambda n: rng.integers(0, 10, n)),
        ("functional block", functional_block(), (16, 16, 64), None),
        ("MLP, BFT in place of Dense", mlp(), (256,), lambda n: rng.integers(0, 10, n)),
    ):
        x = rng.standard_normal((16 * args.steps, *x_shape)).astype("float32")
        if y_fn is None:  # regression to a fixed random target
            y = rng.standard_normal((len(x), *x_shape)).astype("float32")
            model.compile("adam", "mse")
        else:
            y = y_fn(len(x))
            model.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = model.fit(x, y, batch_size=16, epochs=1, verbose=0)
        models[name] = (model, x)
        print(f"{name}: {model.count_params():,} params, loss {history.history['loss'][-1]:.3f}; "
              f"fusion {check_against_dense(model, x[:4])}")

    # Saving and loading keep the layer (registered serializable, no Lambda).
    with tempfile.TemporaryDirectory() as folder:
        model, x = models["MLP, BFT in place of Dense"]
        path = os.path.join(folder, "mlp.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        np.testing.assert_allclose(loaded.predict(x[:4], verbose=0), model.predict(x[:4], verbose=0), atol=1e-5)
    print("Saved and reloaded with keras.saving.load_model(safe_mode=True): same outputs.")


if __name__ == "__main__":
    main()
