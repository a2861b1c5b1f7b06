"""Export a Keras model with ButterflyFusion layers to an int8 LiteRT model for Android.

Steps: load (or build) the model, convert it with keras_bft.tflite.convert
(builtin ops only, static batch 1, every ButterflyFusion lowered to ops
XNNPACK runs, SOFTMAX kept in float), check the .tflite against Keras in the
LiteRT interpreter, and time it with 1 and 2 threads.

On Android, load the file with LiteRT (`org.tensorflow:tensorflow-lite` /
`com.google.ai.edge.litert`), e.g. `Interpreter(file, Interpreter.Options()
.setNumThreads(2))`; the XNNPACK CPU delegate is on by default and runs the
whole graph (the verify step below checks "Fully accelerated").

Run:
    python examples/convert_for_android.py --model bft.keras --output bft_int8.tflite
    python examples/convert_for_android.py --output demo.tflite   # an untrained MobileNetV2BFT
"""

import argparse
import os

import keras

import keras_bft.layers  # noqa: F401  (registers ButterflyFusion for load_model)
from keras_bft import applications
from keras_bft import tflite
from keras_bft.demo import data as data_lib


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a .keras model (default: build an untrained MobileNetV2BFT)")
    parser.add_argument("--output", required=True, help="the .tflite file to write")
    parser.add_argument("--quantization", choices=tflite.QUANTIZATIONS, default="int8")
    parser.add_argument("--calibration-images", type=int, default=200,
                        help="Fashion-MNIST training images used to calibrate int8 ranges")
    parser.add_argument("--verify-images", type=int, default=20)
    parser.add_argument("--benchmark-runs", type=int, default=50)
    parser.add_argument("--force", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)

    if args.model:
        model = keras.saving.load_model(args.model, safe_mode=True)
    else:
        model = applications.MobileNetV2BFT(input_shape=(32, 32, 1), width=1.0, classes=10,
                                            classifier_activation=None)
    size, channels = model.input_shape[1], model.input_shape[-1]

    # Calibration and check images: real ones (Fashion-MNIST), shaped like the model's input.
    dataset = data_lib.load_fashion_mnist()
    x = data_lib.prepare_images(dataset.x_train[:args.calibration_images], size,
                                channels if channels != 1 else None)

    result = tflite.convert(
        model, quantization=args.quantization,
        representative_data=x if args.quantization == "int8" else None,
        output_path=args.output, overwrite=args.force,
    )
    print(f"Wrote {result.path}: {result.size_bytes / 1024:.0f} KiB ({args.quantization}); "
          f"signature inputs {result.input_names}, outputs {result.output_names}")

    report = tflite.verify(result, model, x[:args.verify_images], on_failure="warn")
    print(f"LiteRT vs Keras: {report}")

    rows = tflite.benchmark([os.path.abspath(args.output)], threads=(1, 2), num_runs=args.benchmark_runs,
                            verbose=0)
    for row in rows:
        print(f"LiteRT latency, {row['threads']} thread(s): median {row['median_ms']:.3f} ms, "
              f"p90 {row['p90_ms']:.3f} ms, fully accelerated: {row['fully_accelerated']}")
    return report, rows


if __name__ == "__main__":
    main()
