"""`keras-bft` command line: one subcommand per module that registers one."""

import argparse
import importlib
import sys

# Each module defines `add_parser(subparsers)`, which adds its subcommand(s)
# and sets `func` (taking the parsed args, returning an exit code).
_COMMAND_MODULES = (
    "keras_bft.demo.cli",
    "keras_bft.tflite.cli",
)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="keras-bft",
        description="Butterfly Transform models for Keras 3 and LiteRT.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in _COMMAND_MODULES:
        importlib.import_module(name).add_parser(subparsers)
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
