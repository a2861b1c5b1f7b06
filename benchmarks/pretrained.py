"""Bring your own model, measured: where BFT costs accuracy on a trained model, and what wins it back.

Issue 12, items 3 and 4, on Fashion-MNIST at 32x32 with the demo's data
(keras_bft.demo.data) and training setup (Adam, cosine-decayed learning rate,
BN momentum 0.9, batch 64, logits):

- Teacher: a pointwise MobileNetV2 (`--width`, 1.0 by default) trained for
  `--teacher-epochs`.
- At each fine-tune budget E in `--budgets` (epochs), all on the same
  architecture (the teacher's 1x1s that replace_pointwise selects, by default
  those with >= 64 in and out channels, as butterflies):
  (a) `scratch`: that BFT model trained from scratch for E and for 3E epochs;
  (b) `swap-random`: replace_pointwise(init="random") + fine-tune E;
  (c) `swap-fit`: replace_pointwise(init="fit") + fine-tune E;
  (d) `swap-fit-distill`: replace_pointwise(init="fit") + Distiller E;
  (e) `twin-distill` / `twin`: the pointwise MobileNetV2 of the smallest
      width whose MACs reach the BFT model's, distilled / trained E epochs.
- Ablations (`--ablations`), with recipe (d) at the middle budget: k = 8, two
  stages (k ~ sqrt(n)), no residual, the first N selected 1x1s kept dense,
  the last one kept dense, the two 1x1s that compute the taps kept dense
  (`taps-dense`), and recipe (d) that also matches the teacher's feature maps
  at the taps (`features`: Distiller(feature_layers=TAPS), once per
  `--feature-weights`); each with its int8 LiteRT latency.
- Backbone use (detection, segmentation): for every swapped model, the
  relative error ||student - teacher|| / ||teacher|| of the feature maps an
  SSDLite head taps (TAPS), on the test images: how far the backbone a
  detection head was trained on has moved.

Every model's accuracy is measured on the test split right after its swap
(epoch 0) and after training. int8 latencies are measured in one interleaved
`keras_bft.tflite.benchmark` run at the end (1 thread), so the ratios compare
like with like. Results: `results.json`, `results.md` (with the machine, the
date and this command) and `accuracy_vs_epochs.png` in `--output-dir`.

    python benchmarks/pretrained.py --output-dir pretrained_results          # the full measurement
    python benchmarks/pretrained.py --quick --output-dir /tmp/pretrained     # a few minutes: checks it runs
"""

import argparse
import dataclasses
import datetime
import json
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_bft  # noqa: E402
from keras_bft import applications  # noqa: E402
from keras_bft import tflite  # noqa: E402
from keras_bft.demo import data as data_lib  # noqa: E402
from keras_bft.demo import pipeline  # noqa: E402
from keras_bft.utils import count_macs  # noqa: E402

TWIN_WIDTHS = (0.35, 0.5, 0.75, 1.0, 1.3, 1.4)
# SSDLite's taps on MobileNetV2 (docs/accuracy.md): the expansion at 1/16 resolution and the last feature map.
TAPS = ("block_13_expand_relu", "out_relu")
TAP_PRODUCERS = ("block_13_expand", "Conv_1")  # the 1x1 convs that compute them


@dataclasses.dataclass
class Row:
    """One trained model of the comparison."""

    variant: str
    epochs: int
    macs: int
    params: int
    start_accuracy: object  # right after the swap (None when trained from scratch)
    accuracy: float
    train_seconds: float
    int8_ms: object = None
    tflite_path: object = None
    tap_errors: object = None  # {tap: relative error to the teacher's feature map}, swapped models only


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=250, verbose=0), -1) == y))


def _taps(model, x):
    taps = keras.Model(model.input, [model.get_layer(name).output for name in TAPS])
    return taps.predict(x, batch_size=250, verbose=0)


def _tap_errors(model, teacher_taps, x):
    """{tap: ||model's map - teacher's|| / ||teacher's||} on `x`."""
    return {
        name: float(np.linalg.norm(s - t) / np.linalg.norm(t))
        for name, s, t in zip(TAPS, _taps(model, x), teacher_taps)
    }


class Experiment:
    def __init__(self, args):
        self.args = args
        self.rows = []
        self.fit_reports = {}
        self.teacher_taps = None
        self.loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        dataset = data_lib.load_fashion_mnist(data_dir=args.data_dir)
        x_train, y_train, x_test, y_test = data_lib.subset_per_class(
            dataset, args.train_per_class, args.test_per_class
        )
        self.x_train, self.x_test = data_lib.prepare_images(x_train), data_lib.prepare_images(x_test)
        self.y_train, self.y_test = y_train, y_test
        self.source = data_lib.describe_source(dataset)
        print(f"{self.source}; using {len(x_train)} train / {len(x_test)} test images", flush=True)

    # ------------------------------------------------------------ training

    def train(self, model, epochs, learning_rate, teacher=None, **distill_kwargs):
        """The demo's recipe (Adam, cosine decay to 0, BN momentum 0.9); with a teacher, through Distiller."""
        a = self.args
        pipeline.set_bn_momentum(model, 0.9)
        steps = -(-len(self.x_train) // a.batch_size) * max(epochs, 1)
        optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(learning_rate, steps))
        trainee = model
        if teacher is not None:
            trainee = keras_bft.Distiller(teacher=teacher, student=model, temperature=a.temperature, alpha=a.alpha,
                                          **distill_kwargs)
        trainee.compile(optimizer=optimizer, loss=self.loss, metrics=None, run_eagerly=a.eager)
        start = time.perf_counter()
        if epochs:
            trainee.fit(self.x_train, self.y_train, batch_size=a.batch_size, epochs=epochs, shuffle=True,
                        verbose=2)
        return time.perf_counter() - start

    def record(self, variant, model, epochs, seconds, start_accuracy=None):
        row = Row(variant, epochs, count_macs(model), model.count_params(), start_accuracy,
                  _accuracy(model, self.x_test, self.y_test), seconds)
        if variant == "teacher":
            self.teacher_taps = _taps(model, self.x_test)
        elif start_accuracy is not None:
            row.tap_errors = _tap_errors(model, self.teacher_taps, self.x_test)
        self.rows.append(row)
        start = "" if start_accuracy is None else f" (after the swap: {start_accuracy:.4f})"
        taps = "" if row.tap_errors is None else ", tap errors " + ", ".join(
            f"{k} {v:.3f}" for k, v in row.tap_errors.items())
        print(f"[{variant} @ {epochs} epoch(s)] accuracy {row.accuracy:.4f}{start}, {row.macs:,} MACs, "
              f"{seconds:.0f} s{taps}", flush=True)
        return row

    # ------------------------------------------------------------ models

    def teacher(self):
        keras.utils.set_random_seed(self.args.seed)
        model = applications.MobileNetV2BFT(
            input_shape=self.x_train.shape[1:], width=self.args.width, classes=10,
            classifier_activation=None, fusion="pointwise", name="teacher",
        )
        seconds = self.train(model, self.args.teacher_epochs, self.args.lr)
        self.record("teacher", model, self.args.teacher_epochs, seconds)
        return model

    def swap(self, teacher, init, **kwargs):
        keras.utils.set_random_seed(self.args.seed)
        model, report = keras_bft.replace_pointwise(teacher, init=init, return_report=True, **kwargs)
        if not kwargs and init not in self.fit_reports:  # the per-layer errors of the default swap
            self.fit_reports[init] = report.to_markdown()
            print(report, flush=True)
        return model, _accuracy(model, self.x_test, self.y_test)

    def scratch(self, names):
        keras.utils.set_random_seed(self.args.seed)
        return applications.MobileNetV2BFT(
            input_shape=self.x_train.shape[1:], width=self.args.width, classes=10,
            classifier_activation=None, select=names, name="scratch",
        )

    def twin(self, macs):
        """The pointwise MobileNetV2 of the smallest width with at least `macs` MACs."""
        for width in TWIN_WIDTHS:
            keras.utils.set_random_seed(self.args.seed)
            model = applications.MobileNetV2BFT(
                input_shape=self.x_train.shape[1:], width=width, classes=10,
                classifier_activation=None, fusion="pointwise", name=f"twin_{width:g}".replace(".", "_"),
            )
            if count_macs(model) >= macs:
                return model, width
        return model, width

    def export(self, row, model):
        """Converts `model` to int8 now; its latency is measured with the others at the end."""
        folder = os.path.join(self.args.output_dir, "models")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{len(self.rows):02d}_{row.variant.split(':')[-1].strip()}.tflite")
        path = path.replace(" ", "_").replace("(", "").replace(")", "").replace("=", "")
        tflite.convert(model, quantization="int8", representative_data=self.x_train[:200],
                       output_path=path, overwrite=True)
        row.tflite_path = path

    # ------------------------------------------------------------ runs

    def run(self):
        a = self.args
        teacher = self.teacher()
        if a.latency_runs:
            self.export(self.rows[-1], teacher)
        report = keras_bft.replace_pointwise(teacher, dry_run=True)
        names = [r.path for r in report.layers]
        print(report, flush=True)
        for epochs in [] if a.only_ablations else a.budgets:
            for e in sorted({epochs, 3 * epochs}):
                if not any(r.variant == "scratch" and r.epochs == e for r in self.rows):
                    model = self.scratch(names)
                    self.record("scratch", model, e, self.train(model, e, a.lr))
            model, start = self.swap(teacher, "random")
            self.record("swap-random", model, epochs, self.train(model, epochs, a.finetune_lr), start)
            model, start = self.swap(teacher, "fit")
            self.record("swap-fit", model, epochs, self.train(model, epochs, a.finetune_lr), start)
            model, start = self.swap(teacher, "fit")
            row = self.record("swap-fit-distill", model, epochs,
                              self.train(model, epochs, a.finetune_lr, teacher=teacher), start)
            if a.latency_runs and epochs == a.budgets[0]:
                self.export(row, model)
            twin, width = self.twin(report.macs_after)
            self.record(f"twin-{width:g}", twin, epochs, self.train(twin, epochs, a.lr))
            twin, width = self.twin(report.macs_after)
            row = self.record(f"twin-{width:g}-distill", twin, epochs,
                              self.train(twin, epochs, a.lr, teacher=teacher))
            if a.latency_runs and epochs == a.budgets[0]:
                self.export(row, twin)
        self.ablations(teacher, names)
        if a.latency_runs:
            rows = [r for r in self.rows if r.tflite_path]
            measured = tflite.benchmark([r.tflite_path for r in rows], threads=(1,), num_runs=a.latency_runs,
                                        verbose=0)
            for row, m in zip(rows, measured):
                row.int8_ms = m["median_ms"]
        return self.rows

    def ablations(self, teacher, names):
        a = self.args
        epochs = a.budgets[len(a.budgets) // 2]
        variants = {  # name: (replace_pointwise arguments, Distiller arguments)
            "k=4": ({}, {}),
            "k=8": (dict(butterfly_k=8), {}),
            "two-stages": (dict(num_stages=2), {}),
            "no-residual": (dict(residual=False), {}),
            f"first-{a.keep_first}-dense": (dict(select=names[a.keep_first:]), {}),
            "last-dense": (dict(select=names[:-1]), {}),
            **{
                f"features-w{w:g}": ({}, dict(feature_layers=list(TAPS), feature_weight=w))
                for w in a.feature_weights
            },
            "taps-dense": (dict(select=[n for n in names if n not in TAP_PRODUCERS]), {}),
        }
        for variant, (kwargs, distill_kwargs) in variants.items():
            if variant.split("-")[0] not in [w.split("-")[0] for w in a.ablations]:
                continue
            model, start = self.swap(teacher, "fit", **kwargs)
            row = self.record(f"ablation: {variant}", model, epochs,
                              self.train(model, epochs, a.finetune_lr, teacher=teacher, **distill_kwargs), start)
            if a.latency_runs:
                self.export(row, model)


# ---------------------------------------------------------------- output


def _machine():
    return f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}, Python {platform.python_version()}"


def write_results(rows, args, source, seconds, fit_reports):
    os.makedirs(args.output_dir, exist_ok=True)
    command = "python benchmarks/pretrained.py " + " ".join(sys.argv[1:])
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump({"command": command, "source": source, "machine": _machine(),
                   "date": datetime.date.today().isoformat(), "seconds": seconds,
                   "rows": [dataclasses.asdict(r) for r in rows], "swap_reports": fit_reports}, f, indent=1)
    lines = [
        f"Measured {datetime.date.today().isoformat()} on {_machine()}: `{command}` ({seconds / 60:.0f} min).",
        f"{source}.",
        "",
        "| model | epochs | MACs | params | accuracy after swap | accuracy | int8 ms (1 thread) | "
        + " | ".join(f"{t} rel. error" for t in TAPS) + " |",
        "|---|---:|---:|---:|---:|---:|---:|" + "---:|" * len(TAPS),
    ]
    for r in rows:
        start = "" if r.start_accuracy is None else f"{r.start_accuracy:.4f}"
        ms = "" if r.int8_ms is None else f"{r.int8_ms:.3f}"
        taps = " | ".join("" if r.tap_errors is None else f"{r.tap_errors[t]:.3f}" for t in TAPS)
        lines.append(f"| {r.variant} | {r.epochs} | {r.macs:,} | {r.params:,} | {start} | {r.accuracy:.4f} | {ms} "
                     f"| {taps} |")
    for init, table in fit_reports.items():
        lines += ["", f"The swap with init={init!r}, per layer (error: relative Frobenius error to the trained kernel):",
                  "", table]
    with open(os.path.join(args.output_dir, "results.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)

    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    variants = [v for v in dict.fromkeys(r.variant for r in rows) if v != "teacher" and not v.startswith("ablation")]
    for variant in variants:
        points = sorted((r.epochs, r.accuracy) for r in rows if r.variant == variant)
        ax.plot(*zip(*points), marker="o", label=variant)
    teacher = [r for r in rows if r.variant == "teacher"]
    if teacher:
        ax.axhline(teacher[0].accuracy, color="gray", linestyle="--", label="teacher (pointwise)")
    ax.set_xlabel("training / fine-tune epochs")
    ax.set_ylabel("test accuracy")
    ax.set_title("Fashion-MNIST 32x32: trained MobileNetV2 -> BFT")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(args.output_dir, "accuracy_vs_epochs.png"), dpi=120)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a few minutes: width 0.35, 30 images per class, one budget, two ablations")
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--width", type=float, default=1.0, help="width of the pointwise MobileNetV2 teacher")
    parser.add_argument("--teacher-epochs", type=int, default=6)
    parser.add_argument("--budgets", default="1,2,4", help="fine-tune epochs, comma-separated")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak learning rate from scratch (the demo's)")
    parser.add_argument("--finetune-lr", type=float, default=1e-3, help="peak learning rate after a swap")
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9)
    parser.add_argument("--ablations", default="k=4,k=8,two-stages,no-residual,first-dense,last-dense,features",
                        help="comma-separated subset; empty for none")
    parser.add_argument("--keep-first", type=int, default=4, help="N of the 'first N dense' ablation")
    parser.add_argument("--feature-weights", default="1,10",
                        help="Distiller feature_weight of each 'features' ablation, comma-separated")
    parser.add_argument("--only-ablations", action="store_true",
                        help="the teacher and the ablations only (at the middle of --budgets)")
    parser.add_argument("--data-dir", default=None,
                        help="a folder of Fashion-MNIST idx files (default: the demo's sources, in order)")
    parser.add_argument("--train-per-class", type=int, default=0, help="0: all training images")
    parser.add_argument("--test-per-class", type=int, default=0, help="0: all test images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--latency-runs", type=int, default=100, help="0: no int8 export or latency")
    parser.add_argument("--eager", action="store_true", help="run eagerly (few steps: skips graph tracing)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:  # checks that every step runs; the numbers mean little
        args.width, args.teacher_epochs, args.budgets = 0.35, 3, "1"
        args.train_per_class, args.test_per_class = args.train_per_class or 30, args.test_per_class or 20
        args.ablations, args.latency_runs, args.eager = "features,taps-dense", min(args.latency_runs, 20), True
    args.budgets = [int(b) for b in args.budgets.split(",") if b]
    args.ablations = [a for a in args.ablations.split(",") if a]
    try:
        args.feature_weights = [float(w) for w in args.feature_weights.split(",") if w]
    except ValueError:
        parser.error(f"--feature-weights must list numbers. Received: --feature-weights={args.feature_weights}")
    if not args.budgets or min(args.budgets) < 1:
        parser.error(f"--budgets must list positive epoch counts. Received: --budgets={args.budgets}")
    start = time.perf_counter()
    experiment = Experiment(args)
    rows = experiment.run()
    write_results(rows, args, experiment.source, time.perf_counter() - start, experiment.fit_reports)
    return rows


if __name__ == "__main__":
    main()
