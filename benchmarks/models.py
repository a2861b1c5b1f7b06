"""Model-level benchmark: BFT vs pointwise twins, params, MACs, TF and LiteRT fp32 latency.

For each family, width, resolution and fusion it builds the model
(`include_top=True`, 1000 classes), counts parameters and MACs
(`keras_bft.utils.count_macs`), and times batch-1 inference with TF
(`tf.function`, no XLA) and with LiteRT fp32 (XNNPACK, 1 and 2 threads).
All timed calls are interleaved round-robin (one call of each runner per
round, in a rotating order) and reported as medians, so every ratio in the
table comes from one run under the same load. The paper's matched-FLOP pairs
(MobileNetV1BFT 1.0@160 vs MobileNetV1 0.25@224, 1.0@128 vs 0.25@160) are
included with `--pairs`.

Example:
    PYTHONPATH=. python benchmarks/models.py --families v1,v2 --widths 1.0 \\
        --resolutions 224 --pairs --rounds 20 --output docs/benchmarks-models.md
"""

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np

FAMILIES = {
    "v1": ("MobileNetV1BFT", "MobileNetV1"),
    "v2": ("MobileNetV2BFT", "MobileNetV2"),
    "v3s": ("MobileNetV3SmallBFT", "MobileNetV3-Small"),
    "v3l": ("MobileNetV3LargeBFT", "MobileNetV3-Large"),
    "shufflenet": ("ShuffleNetV2BFT", "ShuffleNetV2"),
}
# (family, width, resolution) of the paper's matched-FLOP comparison: BFT wide vs pointwise narrow.
PAIRS = (
    (("v1", 1.0, 160, "butterfly"), ("v1", 0.25, 224, "pointwise")),
    (("v1", 1.0, 128, "butterfly"), ("v1", 0.25, 160, "pointwise")),
)


def _csv(kind):
    def parse(text):
        return [kind(v) for v in text.split(",") if v]

    return parse


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", type=_csv(str), default=list(FAMILIES), help="comma list of " + ",".join(FAMILIES))
    parser.add_argument("--widths", type=_csv(float), default=[1.0], help="comma list of widths")
    parser.add_argument("--resolutions", type=_csv(int), default=[224], help="comma list of input sizes")
    parser.add_argument("--fusions", type=_csv(str), default=["butterfly", "pointwise"])
    parser.add_argument("--pairs", action="store_true", help="add the paper's matched-FLOP pairs")
    parser.add_argument("--butterfly-k", type=int, default=4)
    parser.add_argument("--num-stages", type=int, default=None)
    parser.add_argument("--threads", type=_csv(int), default=[1, 2], help="LiteRT thread counts")
    parser.add_argument("--rounds", type=int, default=20, help="timed calls per runner")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--converter",
        choices=("keras_bft", "plain"),
        default="keras_bft",
        help="keras_bft.tflite.convert (exporter rewrites) or plain TFLiteConverter",
    )
    parser.add_argument("--no-tf", action="store_true", help="skip TF latency")
    parser.add_argument("--no-litert", action="store_true", help="skip LiteRT latency")
    parser.add_argument("--output", help="also write the table (with date, machine, command) here")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return parser


def _check_args(args):
    for family in args.families:
        if family not in FAMILIES:
            raise ValueError(f"--families must be among {list(FAMILIES)}. Received: {family!r}")
    for fusion in args.fusions:
        if fusion not in ("butterfly", "pointwise"):
            raise ValueError(f"--fusions must be butterfly and/or pointwise. Received: {fusion!r}")
    if args.rounds < 1:
        raise ValueError(f"--rounds must be >= 1. Received: {args.rounds}")
    if args.output:
        from keras_bft.tflite.convert import check_output_path

        try:
            check_output_path(args.output, args.overwrite, "--output")
        except FileExistsError as error:
            raise ValueError(f"{error} (--overwrite here)") from None


def _configs(args):
    configs = [
        (family, width, size, fusion)
        for family in args.families
        for width in args.widths
        for size in args.resolutions
        for fusion in args.fusions
    ]
    if args.pairs:
        configs += [c for pair in PAIRS for c in pair]
    return list(dict.fromkeys(configs))


def _to_litert(model, converter):
    """fp32 flatbuffer bytes.

    `"keras_bft"`: `keras_bft.tflite.convert` (each butterfly rewritten to its
    fastest exact lowering); `"plain"`: `TFLiteConverter.from_keras_model` on
    the model as built (the stages as trained).
    """
    if converter == "keras_bft":
        from keras_bft import tflite

        return tflite.convert(model, quantization="float32").tflite_bytes
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def _litert_runner(flatbuffer, threads, x):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=flatbuffer, num_threads=threads)
    interpreter.allocate_tensors()
    index = interpreter.get_input_details()[0]["index"]

    def run():
        interpreter.set_tensor(index, x)
        interpreter.invoke()

    return run


def _tf_runner(model, x):
    import tensorflow as tf

    call = tf.function(lambda t: model(t, training=False))
    tensor = tf.constant(x)

    def run():
        call(tensor).numpy()

    return run


def _interleaved_medians(runners, rounds, warmup):
    """Median ms per runner; each round calls every runner once, starting at a rotating offset."""
    for run in runners.values():
        for _ in range(warmup):
            run()
    keys = list(runners)
    times = {key: [] for key in keys}
    for r in range(rounds):
        for i in range(len(keys)):
            key = keys[(i + r) % len(keys)]
            start = time.perf_counter()
            runners[key]()
            times[key].append(1000.0 * (time.perf_counter() - start))
    return {key: statistics.median(values) for key, values in times.items()}


def run(args):
    from keras_bft import applications
    from keras_bft.utils import count_macs

    rows, runners = {}, {}
    for config in _configs(args):
        family, width, size, fusion = config
        builder = getattr(applications, FAMILIES[family][0])
        model = builder(
            input_shape=(size, size, 3), width=width, fusion=fusion,
            butterfly_k=args.butterfly_k, num_stages=args.num_stages,
        )
        x = np.random.default_rng(0).uniform(-1, 1, size=(1, size, size, 3)).astype("float32")
        rows[config] = {"params": model.count_params(), "macs": count_macs(model)}
        if not args.no_tf:
            runners[(config, "tf")] = _tf_runner(model, x)
        if not args.no_litert:
            flatbuffer = _to_litert(model, args.converter)
            rows[config]["tflite_mb"] = len(flatbuffer) / 2**20
            for threads in args.threads:
                runners[(config, f"litert{threads}")] = _litert_runner(flatbuffer, threads, x)
        print(f"built {config}: {rows[config]['macs'] / 1e6:.1f}M MACs", file=sys.stderr, flush=True)
    for (config, kind), ms in _interleaved_medians(runners, args.rounds, args.warmup).items():
        rows[config][kind] = ms
    return rows


def _fmt(value, spec):
    return "-" if value is None else format(value, spec)


def format_table(rows, args):
    kinds = ([] if args.no_tf else ["tf"]) + ([] if args.no_litert else [f"litert{t}" for t in args.threads])
    names = {"tf": "TF ms"} | {f"litert{t}": f"LiteRT {t}T ms" for t in args.threads}
    header = ["model", "width", "size", "fusion", "params", "MACs"] + [names[k] for k in kinds]
    header += [f"{names[k]} / pointwise" for k in kinds]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * 4 + "---:|" * (len(header) - 4)]
    for config, row in rows.items():
        family, width, size, fusion = config
        twin = rows.get((family, width, size, "pointwise"))
        cells = [FAMILIES[family][1], f"{width:g}", str(size), fusion, f"{row['params'] / 1e6:.2f}M", f"{row['macs'] / 1e6:.1f}M"]
        cells += [_fmt(row.get(k), ".2f") for k in kinds]
        cells += [
            _fmt(row[k] / twin[k], ".2f") if twin is not None and k in row and k in twin else "-" for k in kinds
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if args.pairs:
        lines += ["", "Matched-FLOP pairs of the paper (BFT wide / pointwise narrow, same run):", ""]
        lines.append("| BFT | pointwise | MACs ratio | " + " | ".join(f"{names[k]} ratio" for k in kinds) + " |")
        lines.append("|---|---|---:|" + "---:|" * len(kinds))
        for bft, pw in PAIRS:
            a, b = rows[bft], rows[pw]
            cells = [
                f"{FAMILIES[bft[0]][1]} {bft[1]:g}@{bft[2]}",
                f"{FAMILIES[pw[0]][1]} {pw[1]:g}@{pw[2]}",
                f"{a['macs'] / b['macs']:.2f} ({a['macs'] / 1e6:.1f}M / {b['macs'] / 1e6:.1f}M)",
            ]
            cells += [_fmt(a[k] / b[k], ".2f") for k in kinds]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    start = time.time()
    rows = run(args)
    table = format_table(rows, args)
    print(table)
    if args.output:
        import keras
        import tensorflow as tf

        header = (
            "# Model benchmark: BFT vs pointwise twins\n\n"
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC\n"
            f"- machine: {_cpu_name()}, {os.cpu_count()} cores "
            "(shared with other jobs: absolute times are noisy; ratios come from one interleaved run)\n"
            f"- software: TF {tf.__version__}, Keras {keras.__version__}\n"
            f"- command: `PYTHONPATH=. python benchmarks/models.py {' '.join(argv or sys.argv[1:])}`\n"
            f"- LiteRT fp32 via {'keras_bft.tflite.convert' if args.converter == 'keras_bft' else 'TFLiteConverter.from_keras_model'}; "
            f"batch 1, medians of {args.rounds} interleaved calls; wall time {time.time() - start:.0f} s\n\n"
        )
        from keras_bft.tflite.convert import write_atomic

        write_atomic((header + table + "\n").encode(), args.output, args.overwrite, "--output")
    return 0


if __name__ == "__main__":
    sys.exit(main())
