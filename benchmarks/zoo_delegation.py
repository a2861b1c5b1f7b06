"""Converts every builder of keras_bft.applications, both fusions, to float32 and int8 at several input sizes and
reports LiteRT's "Fully accelerated" verdict (XNNPACK), the parity check, the op histogram and, for a graph that is
not fully delegated, which operators ran outside the delegate.

Usage:
  PYTHONPATH=. python benchmarks/zoo_delegation.py [--sizes 96,128,160,224] [--width 0.5]
      [--builders MobileNetV3SmallBFT,...] [--batchnorm random|default] [--markdown out.md]

`--batchnorm random` (default) gives the untrained models trained-like BatchNorm statistics
(`keras_bft.tflite.synthetic.randomize_batchnorm`), as the tests do; `default` keeps Keras' initial statistics
(mean 0, variance 1), i.e. exactly what a user who exports a freshly built model gets.
"""

import argparse
import collections
import os
import tempfile
import time

import keras
import numpy as np

from keras_bft import applications as apps
from keras_bft import tflite
from keras_bft.tflite import synthetic

BUILDERS = ("MobileNetV1BFT", "MobileNetV2BFT", "MobileNetV3SmallBFT", "MobileNetV3LargeBFT", "ShuffleNetV2BFT")
FUSIONS = ("butterfly", "pointwise")
QUANTIZATIONS = ("float32", "int8")


def undelegated_ops(tflite_path):
    """Histogram of the operators LiteRT's interpreter left outside the XNNPACK delegate.

    Diagnostic only (the verdict is `tflite.fully_delegated`): no public LiteRT API lists the nodes a delegate
    rejected (the benchmark tool's --verbose prints only the verdict), so this reads the interpreter's node
    table, where each delegated partition is one DELEGATE node, and reports the original nodes whose outputs
    feed a partition or the model's outputs without coming from a partition.
    """
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=tflite_path, num_threads=1)
    interpreter.allocate_tensors()
    nodes = interpreter._get_ops_details()  # no public equivalent; see the docstring
    outputs = {d["index"] for d in interpreter.get_output_details()}
    partitions = [n for n in nodes if n["op_name"] == "DELEGATE"]
    delegated_out = {t for n in partitions for t in n["outputs"]}
    consumed = {t for n in partitions for t in n["inputs"]} | outputs
    left = collections.Counter(
        n["op_name"]
        for n in nodes
        if n["op_name"] != "DELEGATE"
        and set(n["outputs"]) & consumed
        and not set(n["outputs"]) & delegated_out
    )
    return dict(left)


def check(builder, fusion, size, width, batchnorm, seed=0):
    """The rows (one per quantization) of one builder x fusion x size."""
    keras.utils.set_random_seed(seed)
    model = getattr(apps, builder)((size, size, 3), fusion=fusion, width=width, classes=10)
    if batchnorm == "random":
        synthetic.randomize_batchnorm(model, seed=seed)
    data = np.random.default_rng(seed).uniform(-1, 1, (8, size, size, 3)).astype("float32")
    rows = []
    for quantization in QUANTIZATIONS:
        start = time.perf_counter()
        with tempfile.TemporaryDirectory() as folder:
            path = os.path.join(folder, "model.tflite")
            tflite.convert(model, quantization, representative_data=data, output_path=path)
            report = tflite.verify(path, model, data[:4], quantization, on_failure="warn")
            outside = {} if report.fully_delegated else undelegated_ops(path)
        rows.append(
            {
                "builder": builder,
                "fusion": fusion,
                "size": size,
                "quantization": quantization,
                "fully_delegated": report.fully_delegated,
                "passed": report.passed,
                "max_rel_error": report.max_rel_error,
                "snr_db": report.snr_db,
                "top1": report.top1_agreement,
                "outside": outside,
                "ops": report.op_histogram,
                "seconds": time.perf_counter() - start,
            }
        )
    return rows


def markdown_row(row):
    outside = ", ".join(f"{k} {v}" for k, v in row["outside"].items()) or "-"
    top1 = "" if row["top1"] is None else f"{row['top1']:.2f}"
    ops = sum(row["ops"].values())
    return (
        f"| {row['builder']} | {row['fusion']} | {row['size']} | {row['quantization']} | "
        f"{'yes' if row['fully_delegated'] else 'NO'} | {outside} | {row['max_rel_error']:.2g} | "
        f"{row['snr_db']:.1f} | {top1} | {ops} |"
    )


HEADER = (
    "| model | fusion | size | quantization | fully delegated | ops outside XNNPACK | max rel err | SNR dB "
    "| top-1 agree | ops |\n|---|---|---|---|---|---|---|---|---|---|"
)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="96,128,160,224", help="input sizes, e.g. 96,224")
    parser.add_argument("--width", type=float, default=0.5, help="width multiplier of every builder")
    parser.add_argument("--builders", default=",".join(BUILDERS))
    parser.add_argument("--fusions", default=",".join(FUSIONS))
    parser.add_argument("--batchnorm", choices=("random", "default"), default="random")
    parser.add_argument("--markdown", default=None, help="also write the table here")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    lines = [HEADER]
    print(HEADER, flush=True)
    not_delegated = failed = 0
    for size in sizes:
        for builder in args.builders.split(","):
            for fusion in args.fusions.split(","):
                for row in check(builder, fusion, size, args.width, args.batchnorm):
                    lines.append(markdown_row(row))
                    print(lines[-1], flush=True)
                    not_delegated += not row["fully_delegated"]
                    failed += not row["passed"]
    table = "\n".join(lines) + "\n"
    print(f"\n{len(lines) - 1} exports, {not_delegated} not fully delegated, {failed} failed checks")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
