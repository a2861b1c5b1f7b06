"""`keras-bft convert` and `keras-bft benchmark`."""

import argparse
import importlib
import os
import sys
import zipfile

# `keras_bft.tflite.convert` etc. are the functions; these are their modules.
convert_lib = importlib.import_module("keras_bft.tflite.convert")


def _threads(text):
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"--threads must be positive integers separated by commas. Received: {text!r}"
        )
    return values


def add_parser(subparsers):
    """Adds the `convert` and `benchmark` subcommands."""
    p = subparsers.add_parser(
        "convert",
        help="Convert a .keras model to .tflite (builtin ops only, fastest exact BFT lowering).",
        description="Convert a .keras model to a LiteRT .tflite file, then check it against Keras "
        "in LiteRT (parity and full XNNPACK delegation).",
    )
    p.add_argument("model", help="input .keras file")
    p.add_argument("-o", "--output", required=True, help="output .tflite path")
    p.add_argument(
        "--quantize", default="float32", choices=convert_lib.QUANTIZATIONS,
        help="precision (default: float32)",
    )
    p.add_argument(
        "--calibration", default=None,
        help="int8 calibration data: an image folder or a .npy/.npz file of samples",
    )
    p.add_argument("--io-type", default="float32", choices=convert_lib.IO_TYPES, help="int8 model I/O type")
    p.add_argument("--samples", type=int, default=100, help="at most this many calibration samples")
    p.add_argument(
        "--objective", default="latency", choices=("latency", "size", "balanced"),
        help="what each ButterflyFusion's exported form is chosen for: latency (fastest predicted; "
        "default), size (never more weights than the trained stages) or balanced (fastest within "
        "1.25x the staged weights)",
    )
    p.add_argument("--no-optimize", action="store_true", help="keep ButterflyFusion lowerings as saved")
    p.add_argument("--no-verify", action="store_true", help="skip the LiteRT parity/delegation check")
    p.add_argument("--warn-only", action="store_true", help="a failed check warns instead of failing")
    p.add_argument("--force", action="store_true", help="overwrite an existing output")
    p.set_defaults(func=run_convert)

    p = subparsers.add_parser(
        "benchmark",
        help="Benchmark .tflite models in LiteRT, interleaved (median/p90, ratio to the first).",
    )
    p.add_argument("models", nargs="+", help=".tflite files; ratios are to the first")
    p.add_argument("--threads", type=_threads, default=(1, 2), help="e.g. 1,2 (default)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per model and thread count")
    p.add_argument("--warmup", type=int, default=5, help="warm-up runs per model")
    p.add_argument("--rounds", type=int, default=10, help="interleaved rounds")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    p.add_argument("--markdown", default=None, help="write a Markdown table here")
    p.add_argument("--force", action="store_true", help="overwrite existing --json/--markdown files")
    p.set_defaults(func=run_benchmark)


def _error(message):
    print(f"keras-bft: error: {message}", file=sys.stderr)
    return 2


def _load_keras(path):
    import keras

    import keras_bft  # noqa: F401  (registers the layers for deserialization)

    if not os.path.isfile(path):
        raise ValueError(f"No such model file. Received: model={path!r}")
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise ValueError(
            f"The model must be a Keras v3 `.keras` archive (model.save('m.keras')). Received: model={path!r}"
        )
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # corrupt archives and unknown layers raise several types
        raise ValueError(f"Cannot load {path!r} as a Keras model: {error}") from error


def run_convert(args):
    verify_lib = importlib.import_module("keras_bft.tflite.verify")

    if os.path.exists(args.output) and not args.force:
        return _error(f"{args.output!r} exists; pass --force to overwrite it.")
    if args.quantize == "int8" and args.calibration is None:
        return _error(
            "--quantize int8 needs --calibration DATA (an image folder or a .npy/.npz file) for "
            "a model without fake-quant (QAT) ops."
        )
    try:
        model = _load_keras(args.model)
        data, report = convert_lib.convert(
            model,
            args.quantize,
            representative_data=args.calibration,
            io_type=args.io_type,
            optimize=not args.no_optimize,
            num_calibration_samples=args.samples,
            return_report=True,
            objective=args.objective,
        )
        print(report)
        if not args.no_verify:
            samples = convert_lib.sample_inputs(model, num_samples=4)
            if args.calibration is not None:
                # Check on data the int8 ranges were calibrated for, not on noise.
                samples = list(convert_lib.calibration_samples(model, args.calibration, 4))
            result = verify_lib.verify(
                data, model, samples, quantization=args.quantize,
                on_failure="warn" if args.warn_only else "raise",
            )
            print(result)
        convert_lib.write_atomic(data, args.output, overwrite=args.force)
    except (ValueError, FileExistsError, RuntimeError) as error:
        return _error(str(error))
    print(f"wrote {args.output} ({len(data) / 1024:.1f} KiB, {args.quantize})")
    return 0


def run_benchmark(args):
    benchmark_lib = importlib.import_module("keras_bft.tflite.benchmark")

    for path in (args.json, args.markdown):
        if path and os.path.exists(path) and not args.force:
            return _error(f"{path!r} exists; pass --force to overwrite it.")
    for path in args.models:
        if not os.path.isfile(path):
            return _error(f"No such .tflite file. Received: {path!r}")
    try:
        rows = benchmark_lib.benchmark(
            args.models, threads=args.threads, num_runs=args.runs,
            warmup_runs=args.warmup, rounds=args.rounds,
        )
    except (ValueError, RuntimeError) as error:
        return _error(str(error))
    table = benchmark_lib.to_markdown(rows)
    print(table)
    if args.json:
        convert_lib.write_atomic(benchmark_lib.to_json(rows).encode(), args.json, args.force)
    if args.markdown:
        convert_lib.write_atomic(table.encode(), args.markdown, args.force)
    return 0


def main(argv=None):
    """Runs the two subcommands without the rest of the `keras-bft` CLI."""
    parser = argparse.ArgumentParser(prog="keras-bft")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
