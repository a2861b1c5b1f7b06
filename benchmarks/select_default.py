"""Why replace_pointwise's default leaves 1x1s with fewer than 64 channels dense: one layer, measured.

For each shape `NxHxWxC` (or `NxHxWxC:F` for `C -> F` channels) a 1x1 layer
on a typical MobileNetV2 feature map (224x224 input: 16-32 channels at 56x56,
64 at 28x28, 96-576 at 14x14, 160-960 at 7x7) is exported to int8 LiteRT with keras_bft.tflite.convert, as a Conv2D and as a
ButterflyFusion (k=4, the default), and the two are timed in one interleaved
keras_bft.tflite.benchmark run (1 thread). The table gives MACs (= weights)
and the median latency of each, and their ratios.

    python benchmarks/select_default.py
    python benchmarks/select_default.py --shapes 1x56x56x16,1x14x14x96:576 --runs 200
"""

import argparse
import datetime
import os
import platform
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from keras_bft import ButterflyFusion  # noqa: E402
from keras_bft import tflite  # noqa: E402

DEFAULT_SHAPES = (
    "1x56x56x16,1x56x56x32,1x28x28x64,1x14x14x128,1x14x14x256,1x7x7x512,"  # square
    "1x56x56x24:144,1x28x28x32:192,1x14x14x64:384,1x14x14x96:576,1x14x14x576:96,1x7x7x160:960,1x7x7x960:160"
)


def _model(shape, layer):
    inputs = keras.Input(shape[1:], batch_size=shape[0])
    x = layer(inputs)
    # A BN after the 1x1, as in the networks: the exporter folds it where it can.
    return keras.Model(inputs, keras.layers.BatchNormalization()(x))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default=DEFAULT_SHAPES, help="comma-separated NxHxWxC shapes")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--butterfly-k", type=int, default=4)
    args = parser.parse_args(argv)
    rows, paths = [], []
    with tempfile.TemporaryDirectory() as folder:
        for text in args.shapes.split(","):
            text, _, filters = text.partition(":")
            shape = tuple(int(d) for d in text.split("x"))
            n, filters = shape[-1], int(filters or shape[-1])
            calibration = np.random.default_rng(0).uniform(-1, 1, (16, *shape[1:])).astype("float32")
            for kind, layer in (
                ("Conv2D", keras.layers.Conv2D(filters, 1, use_bias=False)),
                ("BFT", ButterflyFusion(filters, butterfly_k=args.butterfly_k)),
            ):
                model = _model(shape, layer)
                path = os.path.join(folder, f"{len(paths):02d}_{kind}.tflite")
                tflite.convert(model, "int8", representative_data=calibration, output_path=path)
                macs = n * filters if kind == "Conv2D" else layer.plan.macs
                rows.append({"shape": f"{'x'.join(map(str, shape[1:3]))}, {n} -> {filters}", "kind": kind,
                             "macs": macs, "radices": None if kind == "Conv2D" else layer.plan.radices})
                paths.append(path)
        measured = tflite.benchmark(paths, threads=(1,), num_runs=args.runs, verbose=0)
    for row, m in zip(rows, measured):
        row["ms"] = m["median_ms"]
    print(f"{datetime.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} cores, "
          f"LiteRT int8, 1 thread, median of {args.runs} runs, interleaved")
    print("| feature map, channels | BFT radices | MACs per pixel BFT / Conv2D | int8 ms BFT / Conv2D | ratio |")
    print("|---|---|---|---|---:|")
    for conv, bft in zip(rows[::2], rows[1::2]):
        print(f"| {conv['shape']} | {list(bft['radices'])} | "
              f"{bft['macs']:,} / {conv['macs']:,} ({bft['macs'] / conv['macs']:.2f}) | "
              f"{bft['ms']:.3f} / {conv['ms']:.3f} | {bft['ms'] / conv['ms']:.2f} |")
    return rows


if __name__ == "__main__":
    main()
