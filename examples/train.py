"""Train any keras-bft builder on Fashion-MNIST or on your own folder of images.

Data: --data-dir as a folder with one sub-folder of images per class (your
data; read with keras.utils.image_dataset_from_directory), or a folder of
Fashion-MNIST idx files; without it, Fashion-MNIST from the first source that
has it (Debian's dataset-fashion-mnist, the Keras download, the subset shipped
with keras-bft).

Run:
    python examples/train.py --builder MobileNetV2BFT --width 1.0 --epochs 5 --output bft.keras
    python examples/train.py --data-dir my_photos/ --color rgb --image-size 64 --output mine.keras
"""

import argparse
import os
import sys
import tempfile

import keras
import numpy as np

from keras_bft import applications
from keras_bft.demo import data as data_lib
from keras_bft.demo import pipeline

BUILDERS = ("MobileNetV1BFT", "MobileNetV2BFT", "MobileNetV3SmallBFT", "MobileNetV3LargeBFT", "ShuffleNetV2BFT")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--builder", choices=BUILDERS, default="MobileNetV2BFT")
    parser.add_argument("--fusion", choices=("butterfly", "pointwise"), default="butterfly")
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--color", choices=("grayscale", "rgb"), default="grayscale",
                        help="color mode of an image folder")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--train-per-class", type=int, default=None, help="use a stratified subset")
    parser.add_argument("--test-per-class", type=int, default=None, help="test on a stratified subset")
    parser.add_argument("--eager", action="store_true",
                        help="run eagerly: for a handful of steps, skips the ~30 s graph trace")
    parser.add_argument("--output", default=None, help="save the trained model here (.keras)")
    parser.add_argument("--force", action="store_true", help="replace an existing --output")
    args = parser.parse_args(argv)
    if args.output and os.path.exists(args.output) and not args.force:
        parser.error(f"--output exists; pass --force to replace it. Received: --output={args.output!r}")

    if args.data_dir and not data_lib.has_idx_files(args.data_dir):
        dataset = data_lib.load_image_folder(args.data_dir, image_size=(args.image_size,) * 2,
                                             color_mode=args.color)
    else:
        dataset = data_lib.load_data(args.data_dir)
    x_train, y_train = dataset.x_train, dataset.y_train
    if args.train_per_class:
        keep = data_lib.stratified_indices(y_train, args.train_per_class)
        x_train, y_train = x_train[keep], y_train[keep]
    x_test, y_test = dataset.x_test, dataset.y_test
    if args.test_per_class:
        keep = data_lib.stratified_indices(y_test, args.test_per_class)
        x_test, y_test = x_test[keep], y_test[keep]
    x_train = data_lib.prepare_images(x_train, args.image_size)
    x_test = data_lib.prepare_images(x_test, args.image_size)

    builder = getattr(applications, args.builder)
    model = builder(input_shape=x_train.shape[1:], width=args.width, classes=len(dataset.class_names),
                    classifier_activation=None, fusion=args.fusion)
    # Short runs: BN moving averages must catch up within a few hundred steps.
    pipeline.set_bn_momentum(model, 0.9)
    model.compile(
        optimizer=keras.optimizers.Adam(2e-3),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
        run_eagerly=args.eager,
    )
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=args.epochs,
              validation_data=(x_test, y_test), verbose=1 if sys.stdout.isatty() else 2)
    accuracy = float(np.mean(np.argmax(model.predict(x_test, verbose=0), -1) == y_test))
    print(f"{model.name}: {model.count_params():,} params, test accuracy {accuracy:.4f} "
          f"on {len(x_test)} images ({', '.join(dataset.class_names[:4])}, ...)")
    if args.output:
        # Save beside the target, then rename: an interrupted save leaves no broken file.
        folder = os.path.dirname(os.path.abspath(args.output))
        fd, tmp = tempfile.mkstemp(suffix=".keras", dir=folder)
        os.close(fd)
        try:
            model.save(tmp)
            os.replace(tmp, args.output)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        print(f"Saved {args.output}")
    return model, accuracy


if __name__ == "__main__":
    main()
