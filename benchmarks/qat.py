"""Fashion-MNIST: float vs post-training int8 vs quantization-aware int8, for a BFT net and its pointwise twin.

Trains a small MobileNet-like stack (3x3 conv, then depthwise 3x3 + channel
fusion blocks, each with batch norm and ReLU, global pooling, dense head) in
two versions that differ only in the channel fusion: `ButterflyFusion` or a
1x1 `Conv2D`. For each it reports test accuracy of

- float: the Keras model;
- PTQ int8: `keras_bft.tflite.convert(model, "int8", representative_data=...)`
  run by LiteRT's interpreter;
- QAT int8: `keras_bft.quantization.quantize_model(model)`, fine-tuned, then
  `keras_bft.tflite.convert(qat_model, "int8")` (no representative data), run
  by LiteRT's interpreter (the fake-quant Keras accuracy is shown too).

Data: Fashion-MNIST through keras_bft.demo.data (`--data-dir`, else Debian's `dataset-fashion-mnist`
in /usr/share/datasets/fashion-mnist, else the subset shipped in the package).

    python benchmarks/qat.py                  # the table in docs/quantization.md (~10 min, 2 cores)
    python benchmarks/qat.py --epochs 1 --qat-epochs 1 --train-samples 2000   # smoke run
"""

import argparse
import datetime
import os
import platform
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from ai_edge_litert.interpreter import Interpreter  # noqa: E402

from keras_bft import ButterflyFusion  # noqa: E402
from keras_bft import tflite  # noqa: E402
from keras_bft.demo import data  # noqa: E402
from keras_bft.quantization import quantize_model  # noqa: E402

def load_fashion_mnist(data_dir):
    """((x_train, y_train), (x_test, y_test)): float32 images in [0, 1] of shape (28, 28, 1)."""
    ds = data.load_fashion_mnist(data_dir=data_dir, download=False)
    return (
        (ds.x_train.astype("float32") / 255.0, ds.y_train.astype("int64")),
        (ds.x_test.astype("float32") / 255.0, ds.y_test.astype("int64")),
    )


def build_model(fusion, butterfly_k=4, seed=0):
    """The small net: 28x28x1 -> 10 logits; `fusion` is "butterfly" or "pointwise".

    Batch norm momentum 0.9: with Keras' 0.99 the moving variance (initialized
    to 1) is still far above the true one (~0.01) after a few hundred steps,
    and the float model's inference accuracy collapses (measured: 10-24%).
    """
    keras.utils.set_random_seed(seed)
    layers = keras.layers

    def fuse(x, filters, name):
        if fusion == "butterfly":
            x = ButterflyFusion(filters, butterfly_k=butterfly_k, name=name)(x)
        else:
            x = layers.Conv2D(filters, 1, use_bias=False, name=name)(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_relu")(x)

    inputs = keras.Input((28, 28, 1))
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="stem")(inputs)
    x = layers.BatchNormalization(momentum=0.9, name="stem_bn")(x)
    x = layers.ReLU(6.0, name="stem_relu")(x)
    for i, (filters, stride) in enumerate([(64, 1), (128, 2), (128, 1), (256, 2), (256, 1)]):
        x = layers.DepthwiseConv2D(3, strides=stride, padding="same", use_bias=False, name=f"dw{i}")(x)
        x = layers.BatchNormalization(momentum=0.9, name=f"dw{i}_bn")(x)
        x = layers.ReLU(6.0, name=f"dw{i}_relu")(x)
        x = fuse(x, filters, f"pw{i}")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(10, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"fmnist_{fusion}")


def _compile(model, learning_rate, steps, jit_compile=False):
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, steps))
    model.compile(
        keras.optimizers.Adam(schedule),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        # XLA's CPU depthwise conv made steps ~8x slower here (measured); default off.
        jit_compile=jit_compile,
    )


def tflite_accuracy(blob, x, y, batch_size):
    interpreter = Interpreter(model_content=blob, num_threads=2)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    correct = 0
    for start in range(0, len(x), batch_size):
        batch = x[start : start + batch_size]
        if len(batch) != batch_size:  # the graph has a static batch
            batch = np.concatenate([batch, np.zeros((batch_size - len(batch),) + batch.shape[1:], batch.dtype)])
        interpreter.set_tensor(inp["index"], batch)
        interpreter.invoke()
        logits = interpreter.get_tensor(out["index"])[: len(x) - start]
        correct += int(np.sum(np.argmax(logits, -1) == y[start : start + batch_size]))
    return correct / len(x)


def run(fusion, data, args, log):
    (x_train, y_train), (x_test, y_test) = data
    model = build_model(fusion, args.butterfly_k)
    steps = args.epochs * (len(x_train) // args.batch_size)
    _compile(model, args.learning_rate, steps, args.jit_compile)
    t0 = time.perf_counter()
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=args.verbose)
    float_time = time.perf_counter() - t0
    float_acc = model.evaluate(x_test, y_test, batch_size=500, verbose=0)[1]
    log(f"{fusion}: float {float_acc:.4f} ({float_time:.0f} s)")

    calibration = x_train[: args.calibration_samples]
    t0 = time.perf_counter()
    ptq = tflite.convert(
        model, "int8", representative_data=calibration,
        num_calibration_samples=args.calibration_samples, batch_size=args.eval_batch,
    ).tflite_bytes
    ptq_acc = tflite_accuracy(ptq, x_test, y_test, args.eval_batch)
    log(f"{fusion}: PTQ int8 {ptq_acc:.4f} ({time.perf_counter() - t0:.0f} s)")

    qat = quantize_model(model, calibration_data=calibration)
    calibrated_acc = None
    if args.report_calibrated:
        _compile(qat, 0.0, 1)
        calibrated_acc = qat.evaluate(x_test, y_test, batch_size=500, verbose=0)[1]
    qat_steps = args.qat_epochs * (len(x_train) // args.batch_size)
    _compile(qat, args.qat_learning_rate, qat_steps, args.jit_compile)
    t0 = time.perf_counter()
    qat.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.qat_epochs, verbose=args.verbose)
    qat_time = time.perf_counter() - t0
    fake_quant_acc = qat.evaluate(x_test, y_test, batch_size=500, verbose=0)[1]
    blob = tflite.convert(qat, "int8", batch_size=args.eval_batch).tflite_bytes  # no representative data
    qat_acc = tflite_accuracy(blob, x_test, y_test, args.eval_batch)
    log(f"{fusion}: QAT fake-quant {fake_quant_acc:.4f}, QAT int8 {qat_acc:.4f} ({qat_time:.0f} s)")
    return {
        "fusion": fusion,
        "params": model.count_params(),
        "float": float_acc,
        "ptq": ptq_acc,
        "calibrated": calibrated_acc,
        "qat_fake": fake_quant_acc,
        "qat": qat_acc,
        "float_s": float_time,
        "qat_s": qat_time,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None, help="idx folder (default: the first source keras_bft.demo.data finds)")
    parser.add_argument("--fusions", default="butterfly,pointwise")
    parser.add_argument("--butterfly-k", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=3e-3)
    parser.add_argument("--qat-learning-rate", type=float, default=3e-4)
    parser.add_argument("--train-samples", type=int, default=20000)
    parser.add_argument("--jit-compile", action="store_true")
    parser.add_argument("--calibration-samples", type=int, default=500)
    parser.add_argument("--eval-batch", type=int, default=1,
                        help="static batch of the converted models (phones run batch 1)")
    parser.add_argument("--report-calibrated", action="store_true",
                        help="also report the fake-quant accuracy after calibration, before fine-tuning")
    parser.add_argument("--verbose", type=int, default=0)
    args = parser.parse_args(argv)

    def log(message):
        print(message, file=sys.stderr, flush=True)

    started = time.perf_counter()
    (x_train, y_train), test = load_fashion_mnist(args.data_dir)
    x_train, y_train = x_train[: args.train_samples], y_train[: args.train_samples]
    rows = [run(f, ((x_train, y_train), test), args, log) for f in args.fusions.split(",")]
    total = time.perf_counter() - started

    print(f"# {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC, {platform.machine()} "
          f"{os.cpu_count()} cores, keras {keras.__version__}, total {total / 60:.1f} min")
    print("# python benchmarks/qat.py " + " ".join(argv if argv is not None else sys.argv[1:]))
    print()
    header = "| model | params | float | PTQ int8 | QAT int8 | QAT - float | fake-quant (Keras) |"
    if args.report_calibrated:
        header += " calibrated only (Keras) |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for r in rows:
        line = (
            f"| {r['fusion']} | {r['params']:,} | {100 * r['float']:.2f} | {100 * r['ptq']:.2f} | "
            f"{100 * r['qat']:.2f} | {100 * (r['qat'] - r['float']):+.2f} | {100 * r['qat_fake']:.2f} |"
        )
        if args.report_calibrated:
            line += f" {100 * r['calibrated']:.2f} |"
        print(line)
    print()
    print(f"Training time per model: float {args.epochs} epochs / QAT {args.qat_epochs} epochs: " + ", ".join(
        f"{r['fusion']} {r['float_s']:.0f} s / {r['qat_s']:.0f} s" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
