"""Working memory of one training step: ButterflyFusion vs Conv2D(n, 1).

The paper names ~4x working memory as a drawback of BFT (each stage keeps its
activation for the backward pass). This compiles one SGD step (forward,
backward, update) with XLA on the JAX backend and reports the compiler's own
buffer assignment: temporary bytes (activations kept for backward, gradients)
besides arguments and outputs. Static and exact, no sampling noise.

    python benchmarks/memory.py
    python benchmarks/memory.py --shapes 32x14x14x256 --ks 4,16
"""

import argparse
import datetime
import math
import os
import platform

os.environ["KERAS_BACKEND"] = "jax"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_bft import ButterflyFusion  # noqa: E402

DEFAULT_SHAPES = "32x14x14x256,32x14x14x1024,32x56x56x128"


def step_temp_bytes(model, shape):
    x = np.zeros(shape, "float32")
    y = np.zeros((shape[0],) + model.output_shape[1:], "float32")
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]

    def loss_fn(tv, ntv, x_, y_):
        out, _ = model.stateless_call(tv, ntv, x_, training=True)
        return ((out - y_) ** 2).mean()

    def step(tv, ntv, x_, y_):
        grads = jax.grad(loss_fn)(tv, ntv, x_, y_)
        return [v - 0.01 * g for v, g in zip(tv, grads)]

    compiled = jax.jit(step).lower(trainable, non_trainable, x, y).compile()
    return compiled.memory_analysis().temp_size_in_bytes


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=DEFAULT_SHAPES)
    parser.add_argument("--ks", default="4,sqrt", help="butterfly_k values; 'sqrt' = ceil(sqrt(n))")
    parser.add_argument("--lowerings", default="auto", help="comma-separated ButterflyFusion lowerings")
    args = parser.parse_args(argv)
    rows = []
    for spec in args.shapes.split(","):
        shape = tuple(int(v) for v in spec.split("x"))
        n = shape[-1]
        candidates = [("Conv2D", lambda: keras.layers.Conv2D(n, 1, use_bias=False))]
        for k in args.ks.split(","):
            k = math.ceil(n**0.5) if k == "sqrt" else int(k)
            for lowering in args.lowerings.split(","):
                candidates.append(
                    (f"BFT k={k} {lowering}", lambda k=k, lo=lowering: ButterflyFusion(n, butterfly_k=k, lowering=lo))
                )
        base = None
        for label, make in candidates:
            inputs = keras.Input(shape[1:])
            model = keras.Model(inputs, make()(inputs))
            temp = step_temp_bytes(model, shape)
            base = base or temp
            layer = model.layers[-1]
            stages = layer.plan.num_stages if isinstance(layer, ButterflyFusion) else 1
            rows.append((spec, label, stages, temp / 2**20, temp / base, np.prod(shape) * 4 / 2**20))
    print(f"{datetime.date.today()} | {platform.machine()} | JAX {jax.__version__} XLA CPU | `python benchmarks/memory.py {' '.join(argv or [])}`")
    print("| shape | layer | stages | step temp MiB | ratio to Conv2D | one activation MiB |")
    print("|---|---|---|---|---|---|")
    for spec, label, stages, mib, ratio, act in rows:
        print(f"| {spec} | {label} | {stages} | {mib:.1f} | {ratio:.2f} | {act:.1f} |")


if __name__ == "__main__":
    main()
