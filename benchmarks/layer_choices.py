"""Checks the exporter's per-layer choices in a real model: for every ButterflyFusion, the chosen lowering and the
dense fold are measured as single-layer int8 LiteRT models at the layer's own input shape (interleaved, 1 thread).

Usage: PYTHONPATH=. python benchmarks/layer_choices.py --model v2 [--runs 30]
"""

import argparse

import keras
import numpy as np

from keras_bft import ButterflyFusion
from keras_bft import tflite
from keras_bft.tflite import cost_model
from keras_bft.tflite import export_layers
from keras_bft.tflite import search


def _models(name):
    from keras_bft import applications as apps

    if name == "v1":
        return apps.MobileNetV1BFT((224, 224, 3), butterfly_k=4)
    if name == "v2":
        return apps.MobileNetV2BFT((224, 224, 3), width=2.0, butterfly_k=4)
    raise ValueError(f"Unknown model. Received: model={name!r}")


def _int8(model):
    """A `ConversionResult` (benchmark takes it as it takes bytes)."""
    data = np.random.default_rng(0).uniform(-1, 1, (4, *model.input_shape[1:])).astype("float32")
    return tflite.convert(model, "int8", representative_data=data, optimize=False, io_type="int8")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="v2")
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    model = _models(args.model)
    rows, blobs, names = [], [], []
    for layer in model.layers:
        if not isinstance(layer, ButterflyFusion):
            continue
        shape = (1, *layer.input.shape[1:])
        positions = int(np.prod(shape[1:-1]))
        decision = search.choose_lowering(layer, positions, "int8")
        staged = search.choose_lowering(layer, positions, "int8", allow_dense=False)
        dense_us = cost_model.default_cost_model("int8").dense_us(
            positions, layer.plan.in_channels, layer.plan.out_channels
        )
        x = keras.Input(shape[1:], batch_size=1)
        dense_model = keras.Model(x, export_layers.dense_fold(layer, shape)(x))
        x = keras.Input(shape[1:], batch_size=1)
        staged_model = keras.Model(x, export_layers.staged_export_layer(layer, staged.merge_stages)(x))
        blobs += [_int8(dense_model), _int8(staged_model)]
        names += [f"{layer.name} dense", f"{layer.name} {staged.radices}"]
        rows.append((layer.name, shape, decision.kind, dense_us, staged.predicted_us, staged.radices))
    results = tflite.benchmark(blobs, threads=(1,), num_runs=args.runs, names=names, rounds=10)
    ms = {r["name"]: r["median_ms"] for r in results}
    print("| layer | input | chosen | dense us (pred / meas) | stages | stages us (pred / meas) | right choice |")
    print("|---|---|---|---|---|---|---|")
    wrong = 0
    for name, shape, kind, dense_us, staged_us, radices in rows:
        dense_ms, staged_ms = ms[f"{name} dense"], ms[f"{name} {radices}"]
        best = "dense" if dense_ms <= staged_ms else "stages"
        wrong += best != kind
        print(
            f"| {name} | {'x'.join(map(str, shape))} | {kind} | {dense_us:.0f} / {dense_ms * 1e3:.0f} | "
            f"{'x'.join(map(str, radices))} | {staged_us:.0f} / {staged_ms * 1e3:.0f} | "
            f"{'yes' if best == kind else 'NO'} |"
        )
    print(f"{wrong} of {len(rows)} choices differ from the faster measured option")


if __name__ == "__main__":
    main()
