"""Swap the 1x1 convolutions of an existing Keras model for ButterflyFusion, with keras_bft.replace_pointwise.

The BFT authors' README tells users to replace pointwise convolutions by hand.
Here it is one call. What happens to the rest of the model:
- BatchNormalization layers stay where they are. In MobileNetV2 every 1x1 conv
  is followed by BN, which now normalizes the butterfly's output: exactly
  where the paper puts BN (after the whole transform, none inside it).
- Every layer keeps its name; every layer that is not replaced keeps its
  weights. With init="fit" each butterfly starts from the stage weights whose
  product best matches the conv's kernel (the report prints how close), with
  init="random" from the butterfly init. Then fine-tune or distill
  (docs/accuracy.md, examples/pretrained_to_bft.py).
- Only stride-1, ungrouped, undilated 1x1 Conv2D (and Dense) layers are
  candidates; their bias and activation move into ButterflyFusion.
  `select` picks among them (here: every 1x1 conv, not the Dense classifier).

Run: python examples/replace_pointwise.py [--size 32] [--alpha 0.35]
"""

import argparse

import keras
import numpy as np

import keras_bft


def main(argv=None):
    parser = argparse.ArgumentParser(description="Replace MobileNetV2's 1x1 convs with ButterflyFusion.")
    parser.add_argument("--size", type=int, default=96, help="input image size")
    parser.add_argument("--alpha", type=float, default=1.0, help="MobileNetV2 width multiplier")
    parser.add_argument("--init", choices=("fit", "random"), default="fit")
    args = parser.parse_args(argv)

    original = keras.applications.MobileNetV2(
        input_shape=(args.size, args.size, 3), alpha=args.alpha, weights=None, classes=10
    )
    bft, report = keras_bft.replace_pointwise(
        original, select=lambda site: site.kind == "Conv2D", init=args.init, return_report=True
    )
    replaced = [row.path for row in report.layers]

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

    print(report)
    print(f"Replaced {len(replaced)} pointwise convs (e.g. {replaced[0]}, {replaced[-1]}).")
    print(f"Model params {report.params_before:,} -> {report.params_after:,}")
    return bft


if __name__ == "__main__":
    main()
