"""Converts every builder of keras_bft.applications, both fusions, to float32 and int8 and reports LiteRT's
"Fully accelerated" verdict (XNNPACK), the parity check and the op histogram.

Usage: PYTHONPATH=. python benchmarks/zoo_delegation.py [--size 96] [--markdown out.md]
"""

import argparse

import numpy as np

from keras_bft import applications as apps
from keras_bft import tflite
from keras_bft.tflite import synthetic

BUILDERS = ("MobileNetV1BFT", "MobileNetV2BFT", "MobileNetV3SmallBFT", "MobileNetV3LargeBFT", "ShuffleNetV2BFT")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    lines = [
        "| model | fusion | quantization | fully delegated | max rel err | SNR dB | top-1 agree | ops |",
        "|---|---|---|---|---|---|---|---|",
    ]
    failures = 0
    for builder in BUILDERS:
        for fusion in ("butterfly", "pointwise"):
            model = getattr(apps, builder)((args.size, args.size, 3), fusion=fusion, classes=10)
            synthetic.randomize_batchnorm(model)
            data = np.random.default_rng(0).uniform(-1, 1, (8, args.size, args.size, 3)).astype("float32")
            for quantization in ("float32", "int8"):
                blob = tflite.convert(model, quantization, representative_data=data)
                report = tflite.verify(blob, model, data[:4], quantization, on_failure="warn")
                failures += not report.passed
                ops = ", ".join(f"{k} {v}" for k, v in report.op_histogram.items())
                top1 = "" if report.top1_agreement is None else f"{report.top1_agreement:.2f}"
                lines.append(
                    f"| {builder} | {fusion} | {quantization} | {report.fully_delegated} | "
                    f"{report.max_rel_error:.2g} | {report.snr_db:.1f} | {top1} | {ops} |"
                )
                print(lines[-1], flush=True)
    table = "\n".join(lines) + "\n"
    print(table)
    print(f"{failures} failed checks")
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
