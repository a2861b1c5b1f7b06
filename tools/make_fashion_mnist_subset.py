"""Writes keras_bft/data/fashion_mnist_subset.npz: a stratified Fashion-MNIST subset shipped with the package.

The demo's last-resort data source (no --data-dir, no Debian package, no network). Built from Debian's
`dataset-fashion-mnist` idx files (apt-get install dataset-fashion-mnist), or any folder holding them.
Fashion-MNIST is (c) Zalando SE, MIT licence.

Usage: python tools/make_fashion_mnist_subset.py [--source DIR] [--train-per-class 400] [--test-per-class 100]
"""

import argparse
import os
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from keras_bft.demo import data  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=data.DEBIAN_DIR, help="folder with the four idx files")
    parser.add_argument("--train-per-class", type=int, default=400)
    parser.add_argument("--test-per-class", type=int, default=100)
    parser.add_argument("--output", default=data.SUBSET_PATH)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    full = data.load_idx_dir(args.source, source="data_dir")
    train = data.stratified_indices(full.y_train, args.train_per_class, seed=args.seed)
    test = data.stratified_indices(full.y_test, args.test_per_class, seed=args.seed + 1)
    arrays = {
        "x_train": full.x_train[train, ..., 0],
        "y_train": full.y_train[train].astype(np.uint8),
        "x_test": full.x_test[test, ..., 0],
        "y_test": full.y_test[test].astype(np.uint8),
    }
    # Write beside the target, then rename: never a half-written file in the package.
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=os.path.dirname(args.output))
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        os.replace(tmp, args.output)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f"Wrote {args.output} ({os.path.getsize(args.output) / 1e6:.2f} MB): "
          f"{len(train)} train / {len(test)} test images from {full.location}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
