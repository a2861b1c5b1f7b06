"""The backend-agnostic tests (layer, plans, replace_pointwise and Distiller), rerun on JAX in a fresh process.

Keras picks its backend once per process, so JAX gets a subprocess of its own.
"""

import os
import subprocess
import sys

import keras

HERE = os.path.dirname(os.path.abspath(__file__))


def test_layer_suite_passes_on_jax():
    if keras.backend.backend() == "jax":
        return  # already running on JAX: the suite itself is the check
    env = dict(os.environ, KERAS_BACKEND="jax")
    result = subprocess.run(
        [
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
            os.path.join(HERE, "test_butterfly_fusion.py"),
            os.path.join(HERE, "test_plans.py"),
            os.path.join(HERE, "test_replace.py"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-3000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
