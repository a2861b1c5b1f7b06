"""Parity of a .tflite model (run in LiteRT) against its Keras model, and LiteRT's delegation verdict."""

import dataclasses
import os
import re
import subprocess
import sys
import tempfile
import warnings

import numpy as np

from keras_bft.tflite import graph

# Default pass thresholds per precision: (max relative error, min SNR dB, min top-1 agreement).
THRESHOLDS = {
    "float32": (1e-4, None, None),
    "float16": (1e-2, 40.0, None),
    "dynamic": (None, 20.0, None),
    "int8": (None, 15.0, 0.9),
}


@dataclasses.dataclass
class VerifyReport:
    """What `verify` measured.

    Attributes:
        quantization: the precision the thresholds were taken for.
        max_rel_error: max |tflite - keras| over max |keras|, over all samples.
        snr_db: 10 log10(signal power / error power) over all outputs.
        top1_agreement: fraction of samples whose LiteRT top class is Keras'
            top class, or one Keras scores within that sample's max absolute
            error of its top score (a tie at the model's precision). None when
            the output has one value per sample.
        op_histogram: `{op: count}` of the .tflite graph.
        fully_delegated: LiteRT's own "Fully accelerated" verdict (None if the
            check was not run).
        passed: whether every threshold held.
        failures: the thresholds that did not hold.
    """

    quantization: str
    max_rel_error: float
    snr_db: float
    top1_agreement: float
    op_histogram: dict
    fully_delegated: object
    passed: bool
    failures: list

    def __str__(self):
        top1 = "n/a" if self.top1_agreement is None else f"{self.top1_agreement:.3f}"
        return (
            f"{self.quantization}: max rel error {self.max_rel_error:.3g}, SNR {self.snr_db:.1f} dB, "
            f"top-1 agreement {top1}, fully delegated {self.fully_delegated}, "
            f"ops {self.op_histogram}" + ("" if self.passed else f"; FAILED: {'; '.join(self.failures)}")
        )


def fully_delegated(tflite_model, threads=1):
    """Runs `python -m ai_edge_litert.tools.benchmark_litert_model` and returns its "Fully accelerated" verdict."""
    data = graph.read_bytes(tflite_model)
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.tflite")
        with open(path, "wb") as f:
            f.write(data)
        result = subprocess.run(
            [sys.executable, "-m", "ai_edge_litert.tools.benchmark_litert_model",
             f"--model={path}", f"--num_threads={threads}", "--num_runs=2", "--warmup_runs=1"],
            capture_output=True, text=True, timeout=600,
        )
    text = result.stdout + result.stderr
    match = re.search(r"Fully accelerated:\s*(True|False)", text)
    if result.returncode != 0 or match is None:
        raise RuntimeError(
            f"LiteRT's benchmark tool failed (exit {result.returncode}):\n{text[-2000:]}"
        )
    return match.group(1) == "True"


def _run_litert(tflite_bytes, samples):
    from ai_edge_litert.interpreter import Interpreter

    # From a file (mmapped, page-aligned): XNNPACK can fail to prepare on a
    # model_content buffer at an unlucky address.
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.tflite")
        with open(path, "wb") as f:
            f.write(tflite_bytes)
        interpreter = Interpreter(model_path=path, num_threads=1)
        interpreter.allocate_tensors()
        return _invoke_all(interpreter, samples)


def _invoke_all(interpreter, samples):
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    results = []
    for sample in samples:
        for detail, array in zip(inputs, sample):
            value = np.asarray(array, dtype=np.float32).reshape(detail["shape"])
            if detail["dtype"] != np.float32:
                scale, zero = detail["quantization"]
                info = np.iinfo(detail["dtype"])
                value = np.clip(np.round(value / scale + zero), info.min, info.max)
            interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
        interpreter.invoke()
        got = []
        for detail in outputs:
            value = interpreter.get_tensor(detail["index"]).astype(np.float32)
            if detail["dtype"] != np.float32:
                scale, zero = detail["quantization"]
                value = (value - zero) * scale
            got.append(value)
        results.append(got)
    return results


def predict(tflite_model, sample_inputs):
    """Runs a .tflite model (bytes or path) in LiteRT on each sample, batch 1 as exported.

    Args:
        tflite_model: the model's bytes or a path to it.
        sample_inputs: an array whose first axis lists the samples, or a list
            of samples (each an array, or a list of arrays for multi-input
            models).

    Returns:
        One list of float32 output arrays per sample; integer interfaces are
        (de)quantized with the model's own scales.
    """
    return _run_litert(graph.read_bytes(tflite_model), _as_samples(sample_inputs))


def _as_samples(sample_inputs):
    """A list of samples, each a list of arrays with batch axis 1."""
    if isinstance(sample_inputs, np.ndarray):
        return [[sample_inputs[i : i + 1]] for i in range(sample_inputs.shape[0])]
    samples = []
    for sample in sample_inputs:
        parts = [sample] if isinstance(sample, np.ndarray) else list(sample)
        samples.append([np.asarray(p, dtype=np.float32) for p in parts])
    return samples


def verify(
    tflite_model,
    keras_model,
    sample_inputs,
    quantization="float32",
    max_rel_error=None,
    min_snr_db=None,
    min_top1=None,
    check_delegation=True,
    on_failure="raise",
):
    """Runs a .tflite model in LiteRT (`ai_edge_litert.interpreter.Interpreter`) and compares it with Keras.

    Args:
        tflite_model: .tflite bytes or path.
        keras_model: the Keras model it was converted from.
        sample_inputs: a NumPy array (samples first) or a list of samples (each
            an array, or a list of arrays for several inputs) with batch 1.
        quantization: which default thresholds apply (see `THRESHOLDS`).
        max_rel_error: override: max |tflite - keras| / max |keras|.
        min_snr_db: override: minimum signal-to-noise ratio in dB.
        min_top1: override: minimum top-1 agreement.
        check_delegation: ask LiteRT's benchmark tool whether the graph is
            fully delegated (XNNPACK), and fail if it is not.
        on_failure: `"raise"` (ValueError) or `"warn"`.

    Returns:
        A `VerifyReport`.
    """
    if quantization not in THRESHOLDS:
        raise ValueError(
            f"`quantization` must be one of {tuple(THRESHOLDS)}. Received: quantization={quantization!r}"
        )
    if on_failure not in ("raise", "warn"):
        raise ValueError(f"`on_failure` must be 'raise' or 'warn'. Received: on_failure={on_failure!r}")
    defaults = THRESHOLDS[quantization]
    max_rel_error = defaults[0] if max_rel_error is None else max_rel_error
    min_snr_db = defaults[1] if min_snr_db is None else min_snr_db
    min_top1 = defaults[2] if min_top1 is None else min_top1

    data = graph.read_bytes(tflite_model)
    samples = _as_samples(sample_inputs)
    if not samples:
        raise ValueError("`sample_inputs` holds no samples.")
    got = _run_litert(data, samples)
    expected = []
    for sample in samples:
        out = keras_model(sample[0] if len(sample) == 1 else sample, training=False)
        out = out if isinstance(out, (list, tuple)) else [out]
        expected.append([np.asarray(o, dtype=np.float32) for o in out])

    ref = np.concatenate([np.concatenate([o.ravel() for o in e]) for e in expected])
    out = np.concatenate([np.concatenate([o.ravel() for o in g]) for g in got])
    error = out - ref
    scale = float(np.max(np.abs(ref))) or 1.0
    rel = float(np.max(np.abs(error))) / scale
    noise = float(np.mean(error**2))
    snr = float("inf") if noise == 0 else 10.0 * np.log10(float(np.mean(ref**2)) / noise)
    top1 = None
    if expected[0][0].shape[-1] > 1:
        agree = []
        for e, g in zip(expected, got):
            e = e[0].reshape(-1, e[0].shape[-1])
            g = g[0].reshape(-1, g[0].shape[-1])
            picked = np.take_along_axis(e, np.argmax(g, -1)[:, None], -1)[:, 0]
            # A class Keras scores within this sample's own error of its top score is a tie
            # (untrained models often have near-uniform scores), not a disagreement.
            noise = np.max(np.abs(e - g), axis=-1)
            agree.append(picked >= np.max(e, -1) - noise)
        top1 = float(np.mean(np.concatenate(agree)))
    delegated = fully_delegated(data) if check_delegation else None

    failures = []
    if max_rel_error is not None and rel > max_rel_error:
        failures.append(f"max relative error {rel:.3g} > {max_rel_error:g}")
    if min_snr_db is not None and snr < min_snr_db:
        failures.append(f"SNR {snr:.1f} dB < {min_snr_db:g} dB")
    if min_top1 is not None and top1 is not None and top1 < min_top1:
        failures.append(f"top-1 agreement {top1:.3f} < {min_top1:g}")
    if check_delegation and not delegated:
        failures.append("not fully delegated to XNNPACK (LiteRT: 'Fully accelerated: False')")
    report = VerifyReport(
        quantization, rel, snr, top1, graph.op_histogram(data), delegated, not failures, failures
    )
    if failures:
        message = f"LiteRT parity check failed for {keras_model.name!r}: {report}"
        if on_failure == "raise":
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    return report
