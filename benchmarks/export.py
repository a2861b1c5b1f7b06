"""int8 LiteRT latency of BFT models against their pointwise twins, exported with the default exporter settings.

Each pair is converted with `keras_bft.tflite.convert(..., "int8")` (random
weights with randomized BatchNorm statistics, a few random calibration samples:
latency does not depend on the values), checked fully delegated by LiteRT, and
timed interleaved in one run with `keras_bft.tflite.benchmark` (XNNPACK, 1 and 2
threads). Ratios are median / the pointwise twin's median from the same run.
Rows "..._zero_cost_fusion" replace every ButterflyFusion by a free channel
slice/repeat: the floor no 1x1 replacement can go below.

The demo32 pair also exports the BFT model for objective="size" and "balanced"
(`convert(..., objective=...)`), and `--extra NAME=PATH` times prebuilt .tflite
files in the same interleaved run (e.g. the file an older checkout wrote).

Usage:
    PYTHONPATH=. python benchmarks/export.py [--pairs layer,v1,v2,matched,demo32] [--runs 50]
        [--extra NAME=PATH ...] [--json out.json] [--markdown out.md]
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time

import keras
import numpy as np

from keras_bft import ButterflyFusion
from keras_bft import tflite
from keras_bft.tflite import cost_model
from keras_bft.tflite import synthetic
from keras_bft.utils.layer_graph import LayerGraph

# name -> (description, target ratio at 1 thread, target at 2 threads)
TARGETS = {
    "layer": ("ButterflyFusion(1024, butterfly_k=32) vs Conv2D(1024, 1), 1x14x14x1024", 0.25, None),
    "v1": ("MobileNetV1BFT 1.0@224 k=4 vs pointwise twin", 0.5, 0.7),
    "v2": ("MobileNetV2BFT 2.0@224 k=4 vs pointwise twin", 0.8, None),
    "matched": ("matched FLOPs: MobileNetV1BFT 1.0@160 k=4 vs pointwise 0.25@224", None, None),
    "v1_raw": ("MobileNetV1BFT 1.0@224 k=4 converted without the rewrite vs pointwise twin", None, None),
    "demo32": ("the demo's MobileNetV2BFT 1.0@32x32x1 (latency, size and balanced objectives) vs its MAC twin "
               "pointwise 0.35 and pointwise 1.0", None, None),
}


class _KeepStaged(cost_model.CostModel):
    """The int8 cost model with the dense fold and the all-in-one merge ruled out: at least two stages."""

    def dense_us(self, positions, in_channels, out_channels):
        return float("inf")

    def stages_us(self, positions, plan, residual):
        return float("inf") if plan.num_stages < 2 else super().stages_us(positions, plan, residual)


def _layer_pair():
    x = keras.Input((14, 14, 1024), batch_size=1)
    dense = keras.Model(x, keras.layers.Conv2D(1024, 1, use_bias=False)(x), name="conv1x1_1024")
    x = keras.Input((14, 14, 1024), batch_size=1)
    bft = keras.Model(x, ButterflyFusion(1024, butterfly_k=32)(x), name="bft_k32_1024")
    x = keras.Input((14, 14, 1024), batch_size=1)
    paper = keras.Model(x, ButterflyFusion(1024, butterfly_k=4)(x), name="bft_k4_1024")
    return [dense, bft, paper]


class ZeroCostFusion(keras.layers.Layer):
    """Stands in for a channel fusion at (almost) no cost: slices or repeats channels.

    Not a model anyone would ship: it bounds from below what ANY 1x1 replacement
    can reach, by leaving only the rest of the network (depthwise convs, BN,
    activations, stem, head) to time.
    """

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters

    def call(self, inputs):
        channels = inputs.shape[-1]
        if channels < self.filters:
            inputs = keras.ops.concatenate([inputs] * -(-self.filters // channels), axis=-1)
        return inputs[..., : self.filters]


class _Passthrough(keras.layers.Layer):
    def call(self, inputs, **kwargs):  # BatchNormalization's call arguments (training, mask) ignored
        return inputs


def _zero_cost(model):
    # A BatchNormalization and a ReLU after a 1x1 conv are folded into it for free; after a slice they
    # would cost passes of their own, so the floor drops them too.
    free = (keras.layers.BatchNormalization, keras.layers.ReLU, keras.layers.Activation)
    graph = LayerGraph(model)
    dropped = set()
    for call in graph.calls:
        source = graph.producer(call.inputs[0]) if call.inputs else None
        if isinstance(call.layer, free) and source is not None:
            if isinstance(source.layer, ButterflyFusion) or source.layer.name in dropped:
                dropped.add(call.layer.name)

    def clone(layer):
        if isinstance(layer, ButterflyFusion):
            return ZeroCostFusion(layer.filters, name=layer.name)
        if layer.name in dropped:
            return _Passthrough(name=layer.name)
        return layer

    return keras.models.clone_model(model, clone_function=clone)


def build(pair):
    """The models of `pair`, the baseline (pointwise twin) first; returns (models, options)."""
    from keras_bft import applications as apps

    if pair == "layer":
        return _layer_pair(), [{}, {}, {}]
    if pair in ("v1", "v1_raw"):
        twin, bft = [apps.MobileNetV1BFT((224, 224, 3), fusion=f, butterfly_k=4) for f in ("pointwise", "butterfly")]
        if pair == "v1_raw":
            return [twin, bft], [{}, {"optimize": False}]
        return [twin, bft, _zero_cost(bft)], [{}, {}, {"label": bft.name + "_zero_cost_fusion"}]
    if pair == "v2":
        twin, bft = [
            apps.MobileNetV2BFT((224, 224, 3), width=2.0, fusion=f, butterfly_k=4)
            for f in ("pointwise", "butterfly")
        ]
        return [twin, bft, _zero_cost(bft)], [{}, {}, {"label": bft.name + "_zero_cost_fusion"}]
    if pair == "matched":
        models = [
            apps.MobileNetV1BFT((224, 224, 3), width=0.25, fusion="pointwise"),
            apps.MobileNetV1BFT((160, 160, 3), width=1.0, butterfly_k=4),
        ]
        return models, [{}, {}]
    if pair == "demo32":
        def v2(width, fusion):
            return apps.MobileNetV2BFT((32, 32, 1), width=width, fusion=fusion, weights=None, classes=10,
                                       classifier_activation=None)

        bft = v2(1.0, "butterfly")
        staged = _KeepStaged(**dataclasses.asdict(cost_model.default_cost_model("int8")))
        return [v2(0.35, "pointwise"), bft, bft, bft, bft, _zero_cost(bft), v2(1.0, "pointwise")], [
            {"label": "pointwise_0.35"}, {"label": bft.name + "_latency"},
            {"label": bft.name + "_size", "objective": "size"},
            {"label": bft.name + "_balanced", "objective": "balanced"},
            {"label": bft.name + "_all_staged", "cost_model": staged},
            {"label": bft.name + "_zero_cost_fusion"}, {"label": "pointwise_1.0"},
        ]
    raise ValueError(f"Unknown pair. Received: pair={pair!r} (known: {sorted(TARGETS)})")


def _macs(model):
    try:
        from keras_bft.utils import count_macs

        return int(count_macs(model))
    except Exception:  # noqa: BLE001 - MACs are informative only
        return None


def run_pair(pair, threads, runs, rounds, log, extra=()):
    models, options = build(pair)
    names, blobs, macs, notes = [], [], [], []
    for model, opts in zip(models, options):
        opts = dict(opts)
        label = opts.pop("label", model.name)
        synthetic.randomize_batchnorm(model)
        data = np.random.default_rng(0).uniform(-1, 1, (8, *model.input_shape[1:])).astype("float32")
        start = time.time()
        result = tflite.convert(model, "int8", representative_data=data, **opts)
        blob, report = result.tflite_bytes, result.report
        if report.decisions:
            log(str(report))
        kinds = {}
        for d in report:
            key = "dense" if d.kind == "dense" else "x".join(str(r) for r in d.radices)
            kinds[key] = kinds.get(key, 0) + 1
        notes.append(kinds)
        log(f"  converted {label} in {time.time() - start:.0f} s; lowerings {kinds}")
        names.append(label + ("" if opts.get("optimize", True) else " (no rewrite)"))
        blobs.append(blob)
        macs.append(_macs(model))
    for name, path in extra:  # after the baseline: ratios stay relative to the pointwise twin
        with open(path, "rb") as f:
            blobs.append(f.read())
        names.append(name)
        macs.append(None)
        notes.append({"prebuilt": path})
    rows = tflite.benchmark(blobs, threads=threads, num_runs=runs, rounds=rounds, names=names)
    for row in rows:
        j = names.index(row["name"])
        row["pair"] = pair
        row["macs"] = macs[j]
        row["lowerings"] = notes[j]
    return rows


def markdown(rows):
    lines = [
        "| pair | model | MACs | threads | median ms | p90 ms | ratio | target | size KiB | fully delegated |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        is_bft = "bft" in row["name"] and "zero_cost" not in row["name"] and "k4_1024" not in row["name"]
        target = TARGETS[row["pair"]][1 if row["threads"] == 1 else 2] if is_bft else None
        met = "" if target is None else (f"<= {target} " + ("met" if row["ratio"] <= target else "MISSED"))
        macs = "" if row["macs"] is None else f"{row['macs'] / 1e6:.0f}M"
        lines.append(
            f"| {row['pair']} | {row['name']} | {macs} | {row['threads']} | {row['median_ms']:.2f} | "
            f"{row['p90_ms']:.2f} | {row['ratio']:.3f} | {met} | {row['size_bytes'] / 1024:.0f} | "
            f"{'yes' if row['fully_accelerated'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", default="layer,v1,v2,matched")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--json", default=None)
    parser.add_argument("--markdown", default=None)
    parser.add_argument("--extra", action="append", default=[],
                        help="NAME=PATH: a prebuilt .tflite timed with the first pair")
    args = parser.parse_args()
    extra = [tuple(item.split("=", 1)) for item in args.extra]
    threads = tuple(int(t) for t in args.threads.split(","))
    started = datetime.datetime.now(datetime.timezone.utc)
    rows = []
    for i, pair in enumerate(args.pairs.split(",")):
        print(f"{pair}: {TARGETS[pair][0]}", flush=True)
        rows.extend(run_pair(pair, threads, args.runs, args.rounds, lambda m: print(m, flush=True),
                             extra if i == 0 else ()))
        print(markdown([r for r in rows if r["pair"] == pair]), flush=True)
    header = (
        f"Measured {started:%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}), LiteRT XNNPACK, int8, "
        f"command: `PYTHONPATH=. python {' '.join(sys.argv)}`\n\n"
    )
    table = header + markdown(rows)
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"date": started.isoformat(), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
