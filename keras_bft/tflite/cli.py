"""`keras-bft convert` and `keras-bft benchmark`.

Every flag is checked before any work, and errors name the flag. TensorFlow
loads only once a command runs (`--help` is instant).
"""

import argparse
import importlib
import os
import sys
import zipfile

# `keras_bft.tflite.convert` etc. are the functions; these are their modules
# (light: they import TensorFlow and Keras inside their functions).
convert_lib = importlib.import_module("keras_bft.tflite.convert")
calibration_lib = importlib.import_module("keras_bft.tflite.calibration")


def _int_at_least(flag, low):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"{flag} must be an integer >= {low}. Received: {flag} {text!r}")
        return value

    return parse


def _threads(text):
    values = []
    for part in text.split(","):
        try:
            values.append(int(part))
        except ValueError:
            values = []
            break
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(
            f"--threads must be positive integers separated by commas (e.g. 1,2 or 12). "
            f"Received: --threads {text!r}"
        )
    return tuple(values)


def _input_shapes(text):
    """`224,224,3` or `8,8,3;16` (several inputs, also by repeating the flag)."""
    shapes = []
    for part in text.split(";"):
        try:
            shape = tuple(int(d) for d in part.replace("x", ",").split(","))
        except ValueError:
            shape = ()
        if not shape or min(shape) < 1:
            raise argparse.ArgumentTypeError(
                "--input-shape must be positive integers separated by commas, without the batch "
                f"(e.g. 224,224,3; ';' or a repeated flag for several inputs). Received: --input-shape {text!r}"
            )
        shapes.append(shape)
    return shapes


def _preprocess(text):
    try:
        calibration_lib.preprocessing(text, "--preprocess")
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def add_parser(subparsers):
    """Adds the `convert` and `benchmark` subcommands."""
    p = subparsers.add_parser(
        "convert",
        help="Convert a .keras model to .tflite (builtin ops only, fastest exact BFT lowering).",
        description="Convert a .keras model to a LiteRT .tflite file, then check it against Keras "
        "in LiteRT (parity of every output, and full XNNPACK delegation). See docs/exporting.md.",
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
    p.add_argument(
        "--preprocess", type=_preprocess, default=None, metavar="{none,mobilenet,scale:A,B}",
        help="how calibration samples map to model inputs: none, mobilenet (x/127.5-1: pixels to "
        "[-1, 1]) or scale:A,B (x*A+B). Default: for an image folder, what the model expects when it "
        "says so (a leading Rescaling layer takes pixels; keras-bft builders' models take [-1, 1]); "
        "else none",
    )
    p.add_argument(
        "--input-shape", type=_input_shapes, action="append", default=None, metavar="H,W,C",
        help="input shape without batch, for models with unknown input dimensions (e.g. 224,224,3); "
        "several inputs: separate with ';' or repeat the flag",
    )
    p.add_argument("--io-type", default="float32", choices=convert_lib.IO_TYPES, help="int8 model I/O type")
    p.add_argument(
        "--samples", type=_int_at_least("--samples", 1), default=100,
        help="at most this many calibration samples (default 100)",
    )
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
    p.add_argument("--threads", type=_threads, default=(1, 2), help="e.g. 1,2 (default) or 4")
    p.add_argument("--runs", type=_int_at_least("--runs", 1), default=50,
                   help="timed runs per model and thread count")
    p.add_argument("--warmup", type=_int_at_least("--warmup", 0), default=5, help="warm-up runs per model")
    p.add_argument("--rounds", type=_int_at_least("--rounds", 1), default=10, help="interleaved rounds")
    p.add_argument("--json", default=None, help="write the rows as JSON here")
    p.add_argument("--markdown", default=None, help="write a Markdown table here")
    p.add_argument("--force", action="store_true", help="overwrite existing --json/--markdown files")
    p.set_defaults(func=run_benchmark)


def _error(message):
    print(f"keras-bft: error: {message}", file=sys.stderr)
    return 2


def _load_keras(path):
    import keras

    # The layers keras-bft models are built from, registered for deserialization.
    importlib.import_module("keras_bft.layers")
    importlib.import_module("keras_bft.applications")
    importlib.import_module("keras_bft.quantization")

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # corrupt archives and unknown layers raise several types
        raise ValueError(f"Cannot load {path!r} as a Keras model: {error}") from error


def _check_model_path(path):
    if not os.path.isfile(path):
        raise ValueError(f"No such model file. Received: model={path!r}")
    if not path.endswith(".keras") or not zipfile.is_zipfile(path):
        raise ValueError(
            f"The model must be a Keras v3 `.keras` archive (model.save('m.keras')). Received: model={path!r}"
        )


def _check_calibration_path(path):
    if path is None:
        return
    if not os.path.exists(path):
        raise ValueError(f"--calibration: no such file or folder. Received: --calibration {path!r}")
    if not os.path.isdir(path) and not path.lower().endswith((".npy", ".npz")):
        raise ValueError(
            f"--calibration must be an image folder or a .npy/.npz file. Received: --calibration {path!r}"
        )


def _is_quantization_aware(model):
    from keras_bft import quantization

    kinds = (quantization.QuantizedLinear, quantization.QuantizedOp, quantization.ActivationQuantizer)
    return any(isinstance(layer, kinds) for layer in model.layers)


def _input_shape_argument(shapes):
    if shapes is None:
        return None
    flat = [shape for group in shapes for shape in group]
    return flat[0] if len(flat) == 1 else flat


def _convert_checks(args):
    """Every flag checked, before the model is even loaded."""
    _check_model_path(args.model)
    convert_lib.check_output_path(args.output, args.force, "-o/--output")
    if os.path.abspath(args.output) == os.path.abspath(args.model):
        raise ValueError(f"-o/--output must not be the input model. Received: -o {args.output!r}")
    _check_calibration_path(args.calibration)
    if args.calibration is not None and args.quantize != "int8":
        raise ValueError(
            "--calibration is used by --quantize int8 only. "
            f"Received: --calibration {args.calibration!r} with --quantize {args.quantize}"
        )
    if args.io_type == "int8" and args.quantize != "int8":
        raise ValueError(f"--io-type int8 needs --quantize int8. Received: --quantize {args.quantize}")


def run_convert(args):
    try:
        _convert_checks(args)
    except (ValueError, FileExistsError) as error:
        return _error(str(error))
    verify_lib = importlib.import_module("keras_bft.tflite.verify")
    input_shape = _input_shape_argument(args.input_shape)
    try:
        print(f"Loading {args.model}", flush=True)
        model = _load_keras(args.model)
        inputs = convert_lib.model_inputs(model, 1, input_shape, "--input-shape")
        if args.quantize == "int8" and args.calibration is None and not _is_quantization_aware(model):
            raise ValueError(
                "--quantize int8 needs --calibration DATA (an image folder or a .npy/.npz file) for "
                "a model without quantization-aware (QAT) layers. Received: no --calibration"
            )
        data = None
        if args.calibration is not None:
            expected = calibration_lib.expected_input_range(model)
            preprocess = args.preprocess
            if preprocess is None:
                preprocess = calibration_lib.default_preprocess(args.calibration, expected)
                if calibration_lib.is_image_folder(args.calibration):
                    print(f"Calibration images preprocessed with --preprocess {preprocess or 'none'}"
                          + ("" if expected else " (the model does not say what range it expects)"))
            data = calibration_lib.load(
                args.calibration, inputs, args.samples, preprocess, expected,
                argument="--calibration", preprocess_argument="--preprocess",
                progress=1 if sys.stdout.isatty() else 2,
            )
        result = convert_lib.convert(
            model,
            args.quantize,
            representative_data=data,
            io_type=args.io_type,
            input_shape=input_shape,
            optimize=not args.no_optimize,
            num_calibration_samples=args.samples,
            verbose=1,
            objective=args.objective,
        )
        if result.report.decisions or result.report.notes:
            print(result.report)
        if not args.no_verify:
            print("Checking the .tflite model against Keras in LiteRT", flush=True)
            if data is not None:
                # Check on data the int8 ranges were calibrated for, not on noise.
                samples = list(data.samples[:4])
            else:
                samples = convert_lib.sample_inputs(model, num_samples=4, input_shape=input_shape)
            report = verify_lib.verify(
                result, model, samples, on_failure="warn" if args.warn_only else "raise",
            )
            print(report)
        convert_lib.write_atomic(result.tflite_bytes, args.output, args.force, "-o/--output")
    except (ValueError, TypeError, FileExistsError, RuntimeError) as error:
        return _error(str(error))
    print(f"Wrote {args.output} ({result.size_bytes / 1024:.1f} KiB, {args.quantize}; "
          f"inputs {list(result.input_names)}, outputs {list(result.output_names)})")
    return 0


def _benchmark_checks(args):
    for path in args.models:
        if not os.path.isfile(path):
            raise ValueError(f"No such .tflite file. Received: {path!r}")
    if args.json and args.markdown and os.path.abspath(args.json) == os.path.abspath(args.markdown):
        raise ValueError(
            f"--json and --markdown name the same file. Received: --json {args.json!r} "
            f"--markdown {args.markdown!r}"
        )
    models = {os.path.abspath(m) for m in args.models}
    for flag, path in (("--json", args.json), ("--markdown", args.markdown)):
        if path is None:
            continue
        convert_lib.check_output_path(path, args.force, flag)
        if os.path.abspath(path) in models:
            raise ValueError(f"{flag} must not be one of the models. Received: {flag} {path!r}")


def run_benchmark(args):
    graph_lib = importlib.import_module("keras_bft.tflite.graph")
    try:
        _benchmark_checks(args)
        for path in args.models:
            graph_lib.read_bytes(path, "model")
    except (ValueError, FileExistsError) as error:
        return _error(str(error))
    benchmark_lib = importlib.import_module("keras_bft.tflite.benchmark")
    try:
        rows = benchmark_lib.benchmark(
            args.models, threads=args.threads, num_runs=args.runs,
            warmup_runs=args.warmup, rounds=args.rounds,
            verbose=1 if sys.stdout.isatty() else 2,
        )
        table = benchmark_lib.to_markdown(rows)
        print(table)
        if args.json:
            convert_lib.write_atomic(benchmark_lib.to_json(rows).encode(), args.json, args.force, "--json")
            print(f"Wrote {args.json}")
        if args.markdown:
            convert_lib.write_atomic(table.encode(), args.markdown, args.force, "--markdown")
            print(f"Wrote {args.markdown}")
    except (ValueError, RuntimeError, FileExistsError) as error:
        return _error(str(error))
    return 0


def main(argv=None):
    """Runs the two subcommands without the rest of the `keras-bft` CLI."""
    parser = argparse.ArgumentParser(prog="keras-bft")
    add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
