"""`keras-bft demo`: BFT vs pointwise on Fashion-MNIST, trained, quantized, exported and benchmarked."""

import os
import sys

_DESCRIPTION = """\
Trains a Butterfly Transform (BFT) MobileNetV2 and its pointwise twin (the cheapest
plain MobileNetV2 with at least as many MACs) on Fashion-MNIST at 32x32, quantizes
them to int8 (post-training, and quantization-aware for one epoch), exports them
to LiteRT, checks the LiteRT models against Keras, benchmarks them with 1 and 2
threads, and writes a table and plots into an output folder.

Data: --data-dir (Fashion-MNIST idx files, or one sub-folder of images per class),
else Debian's dataset-fashion-mnist, else the Keras download, else the subset
shipped with keras-bft. Works offline."""


def add_parser(subparsers):
    """Adds the `demo` subcommand to a `keras-bft` argparse subparsers object."""
    parser = subparsers.add_parser("demo", help="train, quantize, export and benchmark BFT vs pointwise",
                                   description=_DESCRIPTION,
                                   formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", dest="mode", action="store_const", const="quick",
                      help="one BFT model and its twin on a 5000-image subset (default; a few minutes)")
    size.add_argument("--full", dest="mode", action="store_const", const="full",
                      help="all of Fashion-MNIST, 3 BFT and 5 pointwise widths (frontiers), 3 epochs "
                           "+ 1 QAT epoch; prints its expected duration first (88 min on 2 cores)")
    size.add_argument("--tiny", dest="mode", action="store_const", const="tiny",
                      help="a smoke test: a couple of steps on a few hundred images")
    parser.set_defaults(mode="quick")
    parser.add_argument("--data-dir", default=None,
                        help="folder of Fashion-MNIST idx files, or of one sub-folder of images per class")
    parser.add_argument("--output-dir", default=None,
                        help="where to write the table, plots and .tflite models "
                             "(default: ./keras-bft-demo-MODE-DATE-TIME)")
    parser.add_argument("--force", action="store_true",
                        help="replace the results of an earlier demo in --output-dir (only the files it "
                             "wrote; a folder the demo did not write is never replaced)")
    parser.add_argument("--epochs", type=int, default=None, help="override the mode's epochs")
    parser.add_argument("--qat-epochs", type=int, default=None,
                        help="quantization-aware training epochs (default 1; 0 with --tiny); 0 skips QAT")
    parser.add_argument("--train-per-class", type=int, default=None,
                        help="train on a stratified subset of this many images per class")
    parser.add_argument("--bft-widths", type=_widths, default=None, metavar="W[,W...]",
                        help="override the BFT widths, e.g. 0.5,1.0")
    parser.add_argument("--twin-widths", type=_widths, default=None, metavar="W[,W...]",
                        help="override the pointwise widths searched (and trained in --full)")
    parser.set_defaults(func=run)
    return parser


def _widths(text):
    try:
        widths = tuple(float(w) for w in text.split(","))
    except ValueError:
        widths = ()
    if not widths or min(widths) <= 0:
        raise __import__("argparse").ArgumentTypeError(
            f"expected positive numbers separated by commas. Received: {text!r}")
    return widths


def run(args):
    """Runs the demo for parsed arguments; returns the exit code."""
    # Here, not at the top: `keras-bft --help` must not load TensorFlow.
    from keras_bft.demo import data as data_lib
    from keras_bft.demo import pipeline

    overrides = {}
    if args.epochs is not None:
        if args.epochs < 1:
            print(f"error: --epochs must be >= 1. Received: --epochs={args.epochs}", file=sys.stderr)
            return 2
        overrides["epochs"] = args.epochs
    for flag, value, low in (("--qat-epochs", args.qat_epochs, 0), ("--train-per-class", args.train_per_class, 1)):
        if value is not None and value < low:
            print(f"error: {flag} must be >= {low}. Received: {flag}={value}", file=sys.stderr)
            return 2
    if args.qat_epochs is not None:
        overrides["qat_epochs"] = args.qat_epochs
    if args.train_per_class is not None:
        overrides["train_per_class"] = args.train_per_class
    if args.bft_widths:
        overrides["bft_widths"] = args.bft_widths
    if args.twin_widths:
        overrides["twin_widths"] = args.twin_widths
    settings = pipeline.settings_for(args.mode, **overrides)
    output_dir = os.path.abspath(args.output_dir or pipeline.default_output_dir(args.mode))
    try:
        pipeline.check_output_dir(output_dir, args.force, name="--output-dir")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        dataset = data_lib.load_data(args.data_dir, image_size=(settings.image_size,) * 2)
    except ValueError as e:
        # The data functions name their Python argument or the file; say which flag it came from.
        where = f"--data-dir={args.data_dir!r}: " if args.data_dir is not None else ""
        print(f"error: {where}{e}", file=sys.stderr)
        return 2
    print(f"Output folder: {output_dir}")
    demo = pipeline.Demo(settings, dataset, output_dir)
    demo.run(interactive=sys.stdout.isatty())
    print(f"\nWrote {demo.output_dir}/{{results.md, results.json, accuracy_vs_macs.png, "
          f"accuracy_vs_latency.png, models/}}")
    return 0
