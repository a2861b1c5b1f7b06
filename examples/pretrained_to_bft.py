"""From a trained Keras model to an int8 BFT model on Android: swap, fit, distill, export, verify.

1. A trained model: yours (--model, a .keras file with a logits output), or a
   pointwise MobileNetV2 trained here on Fashion-MNIST.
2. keras_bft.replace_pointwise(init="fit"): its 1x1 convs and Dense layers with
   at least 64 channels become ButterflyFusion layers whose stage weights are
   fitted to the trained kernels (the report prints each one's error).
3. keras_bft.Distiller: the butterfly model learns from the labels and from
   the original model's outputs.
4. keras_bft.tflite.convert to int8 and keras_bft.tflite.verify in LiteRT.

Run:
    python examples/pretrained_to_bft.py --output-dir bft_out
    python examples/pretrained_to_bft.py --model mine.keras --output-dir bft_out --distill-epochs 3
"""

import argparse
import os
import sys

import keras
import numpy as np

import keras_bft
from keras_bft import applications
from keras_bft import tflite
from keras_bft.demo import data as data_lib
from keras_bft.demo import pipeline


def _accuracy(model, x, y):
    return float(np.mean(np.argmax(model.predict(x, batch_size=250, verbose=0), -1) == y))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a trained .keras model (logits out); default: train one")
    parser.add_argument("--width", type=float, default=1.0, help="width of the MobileNetV2 trained here")
    parser.add_argument("--epochs", type=int, default=3, help="training epochs of the model trained here")
    parser.add_argument("--distill-epochs", type=int, default=2)
    parser.add_argument("--temperature", type=float, default=4.0)
    parser.add_argument("--alpha", type=float, default=0.9, help="weight of the distillation term")
    parser.add_argument("--train-per-class", type=int, default=400, help="0: all training images")
    parser.add_argument("--test-per-class", type=int, default=100, help="0: all test images")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eager", action="store_true", help="run eagerly (a handful of steps: skips the trace)")
    parser.add_argument("--output-dir", required=True, help="where the .keras and .tflite files go")
    args = parser.parse_args(argv)
    verbose = 1 if sys.stdout.isatty() else 2

    dataset = data_lib.load_fashion_mnist()
    x_train, y_train, x_test, y_test = data_lib.subset_per_class(
        dataset, args.train_per_class, args.test_per_class
    )
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    # 1. The trained model.
    if args.model:
        teacher = keras.saving.load_model(args.model, safe_mode=True)
        size, channels = teacher.input_shape[1], teacher.input_shape[-1]
        x_train = data_lib.prepare_images(x_train, size, channels if channels != 1 else None)
        x_test = data_lib.prepare_images(x_test, size, channels if channels != 1 else None)
    else:
        x_train, x_test = data_lib.prepare_images(x_train), data_lib.prepare_images(x_test)
        keras.utils.set_random_seed(0)
        teacher = applications.MobileNetV2BFT(
            input_shape=x_train.shape[1:], width=args.width, classes=10, classifier_activation=None,
            fusion="pointwise", name="teacher",
        )
        pipeline.set_bn_momentum(teacher, 0.9)  # short run: BN statistics must keep up
        teacher.compile(optimizer=keras.optimizers.Adam(2e-3), loss=loss, metrics=["accuracy"],
                        run_eagerly=args.eager)
        teacher.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs, verbose=verbose)
    teacher_acc = _accuracy(teacher, x_test, y_test)
    print(f"Trained model {teacher.name}: test accuracy {teacher_acc:.4f}")

    # 2. Swap the 1x1 convs and Dense layers for butterflies fitted to their kernels.
    student, report = keras_bft.replace_pointwise(teacher, init="fit", return_report=True)
    print(report)
    swapped_acc = _accuracy(student, x_test, y_test)
    print(f"Right after the swap: test accuracy {swapped_acc:.4f}")

    # 3. Distill: labels plus the trained model's softened outputs.
    pipeline.set_bn_momentum(student, 0.9)
    distiller = keras_bft.Distiller(teacher=teacher, student=student, temperature=args.temperature, alpha=args.alpha)
    distiller.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss, run_eagerly=args.eager)
    history = distiller.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.distill_epochs,
                            verbose=verbose)
    student_acc = _accuracy(student, x_test, y_test)
    print(f"After {args.distill_epochs} epoch(s) of distillation: test accuracy {student_acc:.4f}")

    # 4. Save, export to int8 LiteRT and check it against Keras.
    os.makedirs(args.output_dir, exist_ok=True)
    keras_path = os.path.join(args.output_dir, "bft.keras")
    student.save(keras_path)
    tflite_path = os.path.join(args.output_dir, "bft_int8.tflite")
    result = tflite.convert(student, quantization="int8", representative_data=x_train[:200],
                            output_path=tflite_path, overwrite=True)
    check = tflite.verify(result, student, x_test[:50], quantization="int8", on_failure="warn")
    print(f"Wrote {keras_path} and {tflite_path} ({os.path.getsize(tflite_path) / 1024:.0f} KiB)")
    print(f"LiteRT int8 vs Keras: {check}")
    return {
        "teacher_accuracy": teacher_acc,
        "swapped_accuracy": swapped_acc,
        "student_accuracy": student_acc,
        "report": report,
        "distill_loss": history.history["loss"],
        "verify": check,
        "tflite_path": tflite_path,
    }


if __name__ == "__main__":
    main()
