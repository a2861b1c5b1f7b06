"""int8 LiteRT latency of the QAT export vs the PTQ export of the same BFT model (same lowering decisions).

For each builder, `keras_bft.tflite.convert(model, "int8", objective=...)` (PTQ,
calibrated on random inputs) and `convert(quantize_model(model, objective=...),
"int8")` (QAT, calibrated, not trained: latency does not depend on the values)
are checked to carry the same lowering decisions, then timed interleaved in one
run with `keras_bft.tflite.benchmark` (XNNPACK). The QAT graph differs from the
PTQ one only where the batch norm after a staged butterfly goes: QAT folds its
scale into the last stage and scales the residual with a 1x1 DEPTHWISE_CONV_2D,
PTQ leaves a MUL after the residual ADD.

Usage:
    PYTHONPATH=. python benchmarks/qat_latency.py [--size 64] [--objectives latency,size] [--runs 50]
        [--markdown out.md]
"""

import argparse
import datetime
import os
import platform
import sys

import numpy as np

from keras_bft import applications
from keras_bft import quantization
from keras_bft import tflite
from keras_bft.tflite import synthetic

BUILDERS = (("MobileNetV1", 0.5), ("MobileNetV2", 0.5), ("MobileNetV3Small", 0.75), ("ShuffleNetV2", 1.0))


def _pair(family, width, size, objective):
    model = getattr(applications, family + "BFT")(
        (size, size, 3), width=width, classes=10, classifier_activation=None, weights=None
    )
    synthetic.randomize_batchnorm(model)
    data = np.random.default_rng(0).uniform(-1, 1, (16, size, size, 3)).astype("float32")
    converted = tflite.convert(
        model, "int8", representative_data=data, objective=objective
    )
    ptq, ptq_report = converted.tflite_bytes, converted.report
    qat_model = quantization.quantize_model(model, calibration_data=data, objective=objective)
    converted = tflite.convert(qat_model, "int8")
    qat, qat_report = converted.tflite_bytes, converted.report
    same = len(ptq_report) == len(qat_report) and all(a.same_form(b) for a, b in zip(ptq_report, qat_report))
    forms = {}
    for d in ptq_report:
        forms[d.form] = forms.get(d.form, 0) + 1
    return ptq, qat, same, forms


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--objectives", default="latency,size")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--markdown", default=None)
    args = parser.parse_args()
    threads = tuple(int(t) for t in args.threads.split(","))
    started = datetime.datetime.now(datetime.timezone.utc)
    names, blobs, info = [], [], {}
    for family, width in BUILDERS:
        for objective in args.objectives.split(","):
            ptq, qat, same, forms = _pair(family, width, args.size, objective)
            key = f"{family}BFT {width:g}@{args.size} {objective}"
            info[key] = (same, forms, len(ptq), len(qat))
            print(f"{key}: same decisions {same}, forms {forms}", flush=True)
            names += [f"{key} PTQ", f"{key} QAT"]
            blobs += [ptq, qat]
    rows = tflite.benchmark(blobs, threads=threads, num_runs=args.runs, rounds=args.rounds, names=names)
    ms = {(r["name"], int(r["threads"])): (r["median_ms"], r["fully_accelerated"]) for r in rows}
    lines = [
        f"Measured {started:%Y-%m-%d %H:%M} UTC on {platform.node()} ({os.cpu_count()} CPUs, "
        f"{platform.processor() or platform.machine()}), LiteRT XNNPACK int8, interleaved, "
        f"median of {args.runs} runs x {args.rounds} rounds; command: `PYTHONPATH=. python {' '.join(sys.argv)}`",
        "",
        "| model, objective | forms (PTQ = QAT) | same decisions | threads | PTQ ms | QAT ms | QAT / PTQ "
        "| PTQ KiB | QAT KiB | fully delegated |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, (same, forms, ptq_size, qat_size) in info.items():
        for t in threads:
            (p, p_ok), (q, q_ok) = ms[(f"{key} PTQ", t)], ms[(f"{key} QAT", t)]
            form_text = ", ".join(f"{k} {v}" for k, v in sorted(forms.items()))
            lines.append(
                f"| {key} | {form_text} | {'yes' if same else 'NO'} | {t} | {p:.3f} | {q:.3f} | {q / p:.3f} | "
                f"{ptq_size / 1024:.0f} | {qat_size / 1024:.0f} | {'yes' if p_ok and q_ok else 'NO'} |"
            )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
