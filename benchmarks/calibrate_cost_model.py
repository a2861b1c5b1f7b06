"""Measures the coefficients of keras_bft.tflite.cost_model.CostModel in LiteRT (XNNPACK), then checks its predictions.

Single-op models at 1x14x14xC, converted without the exporter rewrite and timed
interleaved with keras_bft.tflite.benchmark:
- grouped 1x1 Conv2D with groups of `a` input channels, a in 4..1024 -> ns per MAC;
- the perfect-shuffle (Reshape, Permute, Reshape) -> ns per value;
- residual Add -> ns per value.
Then whole ButterflyFusion layers in several exact lowerings: measured vs predicted.

With --write, the fitted coefficients replace the ones the exporter uses
(keras_bft/tflite/cost_models.json), with the date, runtime and machine.

Usage: PYTHONPATH=. python benchmarks/calibrate_cost_model.py [--quantization int8|float32] [--threads 1] [--write]
"""

import argparse
import datetime
import json
import platform

import keras
import numpy as np

from keras_bft import ButterflyFusion
from keras_bft import tflite
from keras_bft.tflite import cost_model
from keras_bft.tflite import export_layers

HW = 14
CHANNELS = 512


def _convert(model, quantization):
    """A `ConversionResult` (benchmark takes it as it takes bytes)."""
    data = np.random.default_rng(0).uniform(-1, 1, (8, *model.input_shape[1:])).astype("float32")
    # int8 I/O: no QUANTIZE/DEQUANTIZE around the measured op.
    io_type = "int8" if quantization == "int8" else "float32"
    return tflite.convert(
        model, quantization, representative_data=data, optimize=False, float_ops=(), io_type=io_type
    )


def _input(channels):
    return keras.Input((HW, HW, channels), batch_size=1)


def grouped_conv(channels, group_in):
    x = _input(channels)
    y = keras.layers.Conv2D(channels, 1, groups=channels // group_in, use_bias=False)(x)
    return keras.Model(x, y)


def shuffle(channels, groups):
    x = _input(channels)
    y = keras.layers.Reshape((HW * HW, groups, channels // groups))(x)
    y = keras.layers.Permute((1, 3, 2))(y)
    y = keras.layers.Reshape((HW, HW, channels))(y)
    return keras.Model(x, y)


def residual_add(channels):
    x = _input(channels)
    y = keras.layers.Conv2D(channels, 1, groups=channels // 8, use_bias=False)(x)
    return keras.Model(x, [keras.layers.Add()([x, y])])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quantization", default="int8", choices=("int8", "float32"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--json", default=None)
    parser.add_argument("--write", action="store_true", help="store the fit in keras_bft/tflite/cost_models.json")
    args = parser.parse_args()
    q = args.quantization
    positions = HW * HW

    groups_in = (4, 8, 16, 32, 64, 128, 512)
    names, blobs = [], []
    for a in groups_in:
        names.append(f"gconv a={a}")
        blobs.append(_convert(grouped_conv(CHANNELS, a), q))
    names.append("shuffle")
    blobs.append(_convert(shuffle(CHANNELS, 32), q))
    names.append("gconv a=8 + add")
    blobs.append(_convert(residual_add(CHANNELS), q))
    rows = tflite.benchmark(blobs, threads=(args.threads,), num_runs=args.runs, names=names)
    ms = {r["name"]: r["median_ms"] for r in rows}

    group_ns = []
    for a in groups_in:
        macs = positions * CHANNELS * a
        group_ns.append((a, ms[f"gconv a={a}"] * 1e6 / macs))
    shuffle_ns = ms["shuffle"] * 1e6 / (positions * CHANNELS)
    add_ns = max(ms["gconv a=8 + add"] - ms["gconv a=8"], 0.0) * 1e6 / (positions * CHANNELS)
    import ai_edge_litert

    fitted = cost_model.CostModel(
        group_ns_per_mac=tuple((a, round(ns, 4)) for a, ns in group_ns),
        shuffle_ns_per_value=round(shuffle_ns, 4),
        add_ns_per_value=round(add_ns, 4),
        op_us=cost_model.default_cost_model(q).op_us,
        fitted=(
            f"benchmarks/calibrate_cost_model.py --quantization {q} --threads {args.threads}; "
            f"{datetime.date.today().isoformat()}; LiteRT {getattr(ai_edge_litert, '__version__', '?')} "
            f"XNNPACK; {platform.processor() or platform.machine()}; op_us assumed, not fitted"
        ),
    )
    print(tflite.benchmark_markdown(rows))
    print("Fitted:", fitted)

    # Check: whole layers, measured vs predicted with the fitted model.
    checks = [
        (1024, 4, None, "stages"), (1024, 4, (2, 3), "stages"), (1024, 4, (3, 2), "stages"),
        (1024, 32, None, "stages"), (1024, 4, None, "dense"), (256, 4, (2, 2), "stages"),
        (256, 4, None, "dense"), (128, 4, (1, 1, 1, 1), "stages"),
    ]
    names, blobs, predicted = [], [], []
    for channels, k, segments, kind in checks:
        x = _input(channels)
        layer = ButterflyFusion(channels, butterfly_k=k)
        layer.build(x.shape)
        segments = segments or (1,) * layer.plan.num_stages
        plan = layer.plan.merge(segments)
        if kind == "dense":
            # The exporter's dense fold is a 1x1 Conv2D (timing does not depend on the weights).
            model = keras.Model(x, keras.layers.Conv2D(channels, 1, use_bias=False)(x))
            predicted.append(fitted.dense_us(positions, channels, channels) / 1e3)
        else:
            model = keras.Model(x, export_layers.staged_export_layer(layer, segments)(x))
            predicted.append(fitted.stages_us(positions, plan, True) / 1e3)
        names.append(f"{channels} {kind} radices={plan.radices}")
        blobs.append(_convert(model, q))
    rows2 = tflite.benchmark(blobs, threads=(args.threads,), num_runs=args.runs, names=names)
    print("| layer (1x14x14) | measured ms | predicted ms |\n|---|---|---|")
    for row, p in zip(rows2, predicted):
        print(f"| {row['name']} | {row['median_ms']:.3f} | {p:.3f} |")
    if args.write:
        cost_model.save_cost_model("int8" if q == "int8" else "float32", fitted)
        print(f"wrote the {q} cost model to {cost_model.COST_MODELS_FILE}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "date": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                    "machine": platform.processor() or platform.machine(),
                    "quantization": q,
                    "ops": rows,
                    "fitted": str(fitted),
                    "layers": [dict(r, predicted_ms=p) for r, p in zip(rows2, predicted)],
                },
                f,
                indent=2,
            )


if __name__ == "__main__":
    main()
