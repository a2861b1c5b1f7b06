"""Swap the 1x1 convolutions of an existing Keras model for ButterflyFusion.

The BFT authors' README tells users to replace pointwise convolutions by hand.
With Keras this is one `keras.models.clone_model` call: its `clone_function`
is called on every layer of the model and returns the layer to use in the copy.

What happens to the rest of the model:
- BatchNormalization layers stay where they are. In MobileNetV2 every 1x1 conv
  is followed by BN, which now normalizes the butterfly's output: exactly
  where the paper puts BN (after the whole transform, none inside it).
- Weights: `clone_model` builds new layers, so the copy starts from fresh
  initial values (ButterflyFusion's own butterfly init for the new layers).
  A pointwise kernel has no exact butterfly factorization, so trained 1x1
  weights cannot be carried over: train the copy (from scratch, or distill
  from the original). Weights of layers you keep can be copied afterwards with
  `new_layer.set_weights(old_layer.get_weights())` when you want that.
- Only stride-1, ungrouped, undilated 1x1 Conv2D layers are replaced; their
  bias and activation move into ButterflyFusion (MobileNetV2's have neither).

Run: python examples/replace_pointwise.py [--size 32] [--alpha 0.35]
"""

import argparse

import keras
import numpy as np

import keras_bft


def is_pointwise(layer):
    """Whether `layer` is a plain 1x1 Conv2D that ButterflyFusion computes exactly as shaped."""
    return (
        type(layer) is keras.layers.Conv2D
        and tuple(layer.kernel_size) == (1, 1)
        and tuple(layer.strides) == (1, 1)
        and tuple(layer.dilation_rate) == (1, 1)
        and layer.groups == 1
    )


def replace_pointwise(model, **butterfly_kwargs):
    """Returns a copy of `model` with every 1x1 Conv2D replaced by ButterflyFusion.

    Args:
        model: a functional or Sequential Keras model.
        **butterfly_kwargs: passed to each ButterflyFusion (e.g. butterfly_k=4).

    Returns:
        (new_model, replaced layer names).
    """
    replaced = []

    def clone_function(layer):
        if is_pointwise(layer):
            replaced.append(layer.name)
            return keras_bft.ButterflyFusion(
                layer.filters,
                use_bias=layer.use_bias,
                activation=layer.activation,
                data_format=layer.data_format,
                name=layer.name,  # same names: the layers of both models line up
                **butterfly_kwargs,
            )
        return layer.__class__.from_config(layer.get_config())

    return keras.models.clone_model(model, clone_function=clone_function), replaced


def main(argv=None):
    parser = argparse.ArgumentParser(description="Replace MobileNetV2's 1x1 convs with ButterflyFusion.")
    parser.add_argument("--size", type=int, default=96, help="input image size")
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier")
    args = parser.parse_args(argv)

    original = keras.applications.MobileNetV2(
        input_shape=(args.size, args.size, 3), alpha=args.alpha, weights=None, classes=10
    )
    bft, replaced = replace_pointwise(original)

    # Every replaced layer produces the shape the 1x1 conv produced, so the rest
    # of the graph (BN, ReLU6, adds, depthwise convs) is unchanged.
    for name in replaced:
        before, after = original.get_layer(name), bft.get_layer(name)
        assert before.output.shape == after.output.shape, (name, before.output.shape, after.output.shape)
        assert isinstance(after, keras_bft.ButterflyFusion)
    assert original.output.shape == bft.output.shape

    x = np.random.default_rng(0).random((2, args.size, args.size, 3), dtype=np.float32)
    y = bft.predict(x, verbose=0)
    assert y.shape == (2, 10) and np.allclose(y.sum(axis=-1), 1.0, atol=1e-4)

    # The conv weights of `original` (1x1) versus the butterfly stages of `bft`.
    pw = sum(int(np.prod(original.get_layer(n).kernel.shape)) for n in replaced)
    bf = sum(int(np.prod(k.shape)) for n in replaced for k in bft.get_layer(n).kernels)
    print(f"Replaced {len(replaced)} pointwise convs (e.g. {replaced[0]}, {replaced[-1]}).")
    print(f"1x1 weights: {pw:,} -> butterfly weights: {bf:,}; "
          f"model params {original.count_params():,} -> {bft.count_params():,}")
    return bft


if __name__ == "__main__":
    main()
