"""Parity of a .tflite model (run in LiteRT) against its Keras model, and LiteRT's delegation verdict.

Inputs and outputs are matched by name through the model's `serving_default`
signature (see `convert`), so a multi-output model is checked output by output.
"""

import dataclasses
import warnings

import numpy as np

from keras_bft.tflite import calibration
from keras_bft.tflite import graph
from keras_bft.tflite import runtime

# Default pass thresholds per precision: (max relative error, min SNR dB, min top-1 agreement).
THRESHOLDS = {
    "float32": (1e-4, None, None),
    "float16": (1e-2, 40.0, None),
    "dynamic": (None, 20.0, None),
    "int8": (None, 15.0, 0.9),
}


@dataclasses.dataclass(frozen=True)
class OutputReport:
    """What `verify` measured on one output.

    Attributes:
        max_rel_error: max |tflite - keras| over max |keras|, over all samples.
        snr_db: 10 log10(signal power / error power).
        top1_agreement: fraction of samples whose LiteRT top class is Keras'
            top class, or one Keras scores within that sample's max absolute
            error of its top score (a tie at the model's precision). None for
            an output that is not a classifier's.
    """

    max_rel_error: float
    snr_db: float
    top1_agreement: object

    def __str__(self):
        top1 = "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.3f}"
        return f"max rel error {self.max_rel_error:.3g}, SNR {self.snr_db:.1f} dB{top1}"


@dataclasses.dataclass
class VerifyReport:
    """What `verify` measured.

    Attributes:
        quantization: the precision the thresholds were taken for.
        max_rel_error: the largest of the outputs' max relative errors.
        snr_db: the lowest of the outputs' SNRs.
        top1_agreement: the lowest top-1 agreement of the classifier outputs
            (None when no output is a classifier's).
        op_histogram: `{op: count}` of the .tflite graph.
        fully_delegated: LiteRT's own verdict (`CompiledModel.is_fully_accelerated()`),
            None if the check was not run.
        passed: whether every threshold held.
        failures: the thresholds that did not hold.
        outputs: `{output name: OutputReport}`, in the Keras model's order.
    """

    quantization: str
    max_rel_error: float
    snr_db: float
    top1_agreement: object
    op_histogram: dict
    fully_delegated: object
    passed: bool
    failures: list
    outputs: dict = dataclasses.field(default_factory=dict)

    def __str__(self):
        if len(self.outputs) > 1:
            measured = "; ".join(f"{name}: {report}" for name, report in self.outputs.items())
        else:
            top1 = "n/a" if self.top1_agreement is None else f"{self.top1_agreement:.3f}"
            measured = (
                f"max rel error {self.max_rel_error:.3g}, SNR {self.snr_db:.1f} dB, "
                f"top-1 agreement {top1}"
            )
        return (
            f"{self.quantization}: {measured}, fully delegated {self.fully_delegated}, "
            f"ops {self.op_histogram}" + ("" if self.passed else f"; FAILED: {'; '.join(self.failures)}")
        )


def fully_delegated(tflite_model, threads=1):
    """LiteRT's own verdict: whether every op runs in the CPU accelerator (XNNPACK).

    Args:
        tflite_model: bytes, a path or a `ConversionResult`.
        threads: the thread count to compile with.

    Returns:
        `CompiledModel.is_fully_accelerated()` of the model compiled for LiteRT's
        CPU accelerator.
    """
    with runtime.model_file(tflite_model) as path:
        return bool(runtime.compiled_model(path, threads).is_fully_accelerated())


class _Model:
    """A LiteRT interpreter with the model's inputs and outputs by name, in the Keras order."""

    def __init__(self, interpreter, data):
        self.interpreter = interpreter
        recorded = graph.keras_signature(data) or {}
        names = graph.signature(data, "serving_default")
        if names is not None:
            self.runner = interpreter.get_signature_runner("serving_default")
            inputs = self.runner.get_input_details()
            outputs = self.runner.get_output_details()
        else:  # a file without signature: its tensors, in graph order
            self.runner = None
            inputs = {d["name"]: d for d in interpreter.get_input_details()}
            outputs = {d["name"]: d for d in interpreter.get_output_details()}
        order = recorded.get("inputs", list(inputs))
        self.inputs = {n: inputs[n] for n in order if n in inputs} if set(order) == set(inputs) else inputs
        order = recorded.get("outputs", list(outputs))
        self.outputs = {n: outputs[n] for n in order} if set(order) == set(outputs) else outputs
        self.structure = recorded.get("output_structure", "dict" if names is not None else "list")

    def run(self, sample):
        values = {}
        for name, detail in self.inputs.items():
            value = sample[name]
            if detail["dtype"] != np.float32 and detail["quantization"][0]:
                scale, zero = detail["quantization"]
                info = np.iinfo(detail["dtype"])
                value = np.clip(np.round(value / scale + zero), info.min, info.max)
            values[name] = np.asarray(value).astype(detail["dtype"]).reshape(detail["shape"])
        if self.runner is not None:
            raw = self.runner(**values)
        else:
            for name, detail in self.inputs.items():
                self.interpreter.set_tensor(detail["index"], values[name])
            self.interpreter.invoke()
            raw = {n: self.interpreter.get_tensor(d["index"]) for n, d in self.outputs.items()}
        result = {}
        for name, detail in self.outputs.items():
            value = np.asarray(raw[name]).astype(np.float32)
            if detail["dtype"] != np.float32 and detail["quantization"][0]:
                scale, zero = detail["quantization"]
                value = (value - zero) * scale
            result[name] = value
        return result

    def structured(self, outputs):
        if self.structure == "single" and len(outputs) == 1:
            return next(iter(outputs.values()))
        if self.structure == "list":
            return list(outputs.values())
        return outputs


def _samples(sample_inputs, inputs, argument="sample_inputs"):
    """A list of samples, each `{input name: float32 array of the input's shape}`."""
    names = list(inputs)
    received = calibration.describe(sample_inputs)
    if isinstance(sample_inputs, dict):
        if set(sample_inputs) != set(names):
            raise ValueError(
                f"`{argument}` as a dict must have one array per model input {names}. "
                f"Received: {argument}={received}"
            )
        arrays = [np.asarray(sample_inputs[n]) for n in names]
        counts = {a.shape[0] if a.ndim else 0 for a in arrays}
        if len(counts) != 1:
            raise ValueError(
                f"`{argument}` arrays must hold as many samples each. Received: {argument}={received}"
            )
        raw = [[a[i : i + 1] for a in arrays] for i in range(counts.pop())]
    elif isinstance(sample_inputs, np.ndarray):
        if len(names) != 1:
            raise ValueError(
                f"`{argument}` for a model with inputs {names} must be a list of samples or a dict "
                f"by input name. Received: {argument}={received}"
            )
        raw = [[sample_inputs[i : i + 1]] for i in range(sample_inputs.shape[0] if sample_inputs.ndim else 0)]
    elif isinstance(sample_inputs, (list, tuple)):
        raw = []
        for sample in sample_inputs:
            if isinstance(sample, dict):
                if set(sample) != set(names):
                    raise ValueError(
                        f"`{argument}` samples given as dicts must have the keys {names}. "
                        f"Received: a sample with keys {sorted(sample)}"
                    )
                raw.append([sample[n] for n in names])
            elif isinstance(sample, (list, tuple)):
                raw.append(list(sample))
            else:
                raw.append([sample])
    else:
        raise ValueError(
            f"`{argument}` must be an array (samples first), a list of samples or a dict by input "
            f"name. Received: {argument}={received}"
        )
    if not raw:
        raise ValueError(f"`{argument}` holds no samples. Received: {argument}={received}")
    samples = []
    for index, parts in enumerate(raw):
        if len(parts) != len(names):
            raise ValueError(
                f"`{argument}` sample {index} has {len(parts)} array(s); the model has "
                f"{len(names)} input(s) {names}. Received: {argument}={received}"
            )
        sample = {}
        for name, part in zip(names, parts):
            shape = tuple(int(d) for d in inputs[name]["shape"])
            try:
                value = np.asarray(part, dtype=np.float32)
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"`{argument}` sample {index}, input {name!r} is not numeric ({error}). "
                    f"Received: {argument}={received}"
                ) from None
            if value.size != int(np.prod(shape)):
                raise ValueError(
                    f"`{argument}` sample {index}, input {name!r} has shape {value.shape}; the model "
                    f"takes {shape} (batch {shape[0]} as exported). Received: {argument}={received}"
                )
            sample[name] = value.reshape(shape)
        samples.append(sample)
    return samples


def predict(tflite_model, sample_inputs):
    """Runs a .tflite model in LiteRT on each sample, batch as exported (1 by default).

    Args:
        tflite_model: bytes, a path, or a `ConversionResult`.
        sample_inputs: an array whose first axis lists the samples (one-input
            models), a dict `{input name: array, samples first}`, or a list of
            samples (each an array, a list of arrays in the model's input order,
            or a dict by input name).

    Returns:
        One entry per sample, shaped like the Keras model's output: an array,
        a list of arrays, or a dict by output name (for files written by
        `convert`; other files give a dict by signature output name, or a list
        when they have no signature). Integer interfaces are (de)quantized with
        the model's own scales; outputs are float32.

    Example:

    ```python
    result = convert(model)  # a model with outputs {"boxes": ..., "classes": ...}
    first = predict(result, x[:4])[0]
    first["boxes"].shape  # (1, 4)
    ```
    """
    with runtime.model_file(tflite_model) as path:
        model = _Model(runtime.interpreter(path), graph.read_bytes(path))
        return [model.structured(model.run(s)) for s in _samples(sample_inputs, model.inputs)]


def _is_probability(values):
    return bool(np.all(values >= -1e-6) and np.allclose(values.sum(-1), 1.0, atol=1e-3))


def _compare(expected, got, classifier):
    ref = np.concatenate([e.ravel() for e in expected])
    out = np.concatenate([g.ravel() for g in got])
    error = out - ref
    scale = float(np.max(np.abs(ref))) or 1.0
    rel = float(np.max(np.abs(error))) / scale
    noise = float(np.mean(error**2))
    snr = float("inf") if noise == 0 else 10.0 * np.log10(float(np.mean(ref**2)) / noise)
    top1 = None
    if classifier:
        agree = []
        for e, g in zip(expected, got):
            e = e.reshape(-1, e.shape[-1])
            g = g.reshape(-1, g.shape[-1])
            picked = np.take_along_axis(e, np.argmax(g, -1)[:, None], -1)[:, 0]
            # A class Keras scores within this sample's own error of its top score is a tie
            # (untrained models often have near-uniform scores), not a disagreement.
            tolerance = np.max(np.abs(e - g), axis=-1)
            agree.append(picked >= np.max(e, -1) - tolerance)
        top1 = float(np.mean(np.concatenate(agree)))
    return OutputReport(rel, snr, top1)


def _match_outputs(keras_names, tflite_names):
    """`{keras name: tflite name}`: by name, or by position for a file without names."""
    if set(keras_names) == set(tflite_names):
        return {n: n for n in keras_names}
    if len(keras_names) == len(tflite_names) and not set(keras_names) & set(tflite_names):
        return dict(zip(keras_names, tflite_names))
    raise ValueError(
        f"The .tflite model's outputs {list(tflite_names)} are not the Keras model's "
        f"{list(keras_names)}; was it converted from this model?"
    )


def verify(
    tflite_model,
    keras_model,
    sample_inputs,
    quantization=None,
    max_rel_error=None,
    min_snr_db=None,
    min_top1=None,
    check_delegation=True,
    on_failure="raise",
    classifier_outputs=None,
):
    """Runs a .tflite model in LiteRT and compares it with Keras, output by output.

    Outputs are matched by name (the `serving_default` signature). A
    mixed-precision Keras model is compared through its float32 rebuild (the
    graph `convert` exported; see `convert.static_float32_model`). Each output
    gets its max relative error and SNR; top-1 agreement is scored on
    classifier outputs: `classifier_outputs` if given, else the single output
    of a one-output model with one row of classes per sample, and in
    multi-output models the outputs whose Keras values are probabilities
    (non-negative rows summing to 1).

    Args:
        tflite_model: .tflite bytes, a path or a `ConversionResult`.
        keras_model: the Keras model it was converted from.
        sample_inputs: as for `predict`.
        quantization: which default thresholds apply (see `THRESHOLDS`);
            default: the `ConversionResult`'s, else `"float32"`.
        max_rel_error: override: max |tflite - keras| / max |keras|.
        min_snr_db: override: minimum signal-to-noise ratio in dB.
        min_top1: override: minimum top-1 agreement.
        check_delegation: ask LiteRT (`CompiledModel.is_fully_accelerated()`)
            whether the graph is fully delegated (XNNPACK), and fail if not.
        on_failure: `"raise"` (ValueError) or `"warn"`.
        classifier_outputs: names of the outputs to score top-1 on.

    Returns:
        A `VerifyReport`.
    """
    from keras_bft.tflite.calibration import ModelInput
    from keras_bft.tflite.convert import ConversionResult
    from keras_bft.tflite.convert import call_argument
    from keras_bft.tflite.convert import output_names
    from keras_bft.tflite.convert import static_float32_model

    if quantization is None:
        quantization = (
            tflite_model.quantization if isinstance(tflite_model, ConversionResult) else "float32"
        )
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

    with runtime.model_file(tflite_model) as path:
        data = graph.read_bytes(path)
        model = _Model(runtime.interpreter(path), data)
        samples = _samples(sample_inputs, model.inputs)
        got = [model.run(s) for s in samples]
        delegated = bool(runtime.compiled_model(path).is_fully_accelerated()) if check_delegation else None

    names = list(model.inputs)
    keras_model = static_float32_model(
        keras_model, [ModelInput(n, tuple(d["shape"]), "float32") for n, d in model.inputs.items()]
    )
    expected = []
    for sample in samples:
        out = keras_model(call_argument(keras_model, [sample[n] for n in names], names), training=False)
        _, keras_names, flat = output_names(keras_model, out)
        expected.append(dict(zip(keras_names, (np.asarray(o, dtype=np.float32) for o in flat))))
    pairs = _match_outputs(list(expected[0]), list(model.outputs))
    if classifier_outputs is not None:
        unknown = sorted(set(classifier_outputs) - set(pairs))
        if unknown:
            raise ValueError(
                f"`classifier_outputs` names outputs the model lacks: {unknown}; outputs are "
                f"{list(pairs)}. Received: classifier_outputs={classifier_outputs!r}"
            )

    outputs = {}
    for keras_name, tflite_name in pairs.items():
        want = [e[keras_name] for e in expected]
        have = [g[tflite_name] for g in got]
        rows = want[0].ndim == 2 and want[0].shape[-1] > 1
        if classifier_outputs is not None:
            classifier = keras_name in classifier_outputs
        elif len(pairs) == 1:
            classifier = rows
        else:
            classifier = rows and all(_is_probability(w) for w in want)
        outputs[keras_name] = _compare(want, have, classifier)

    failures = []
    for name, report in outputs.items():
        where = f"output {name!r}: " if len(outputs) > 1 else ""
        if max_rel_error is not None and report.max_rel_error > max_rel_error:
            failures.append(f"{where}max relative error {report.max_rel_error:.3g} > {max_rel_error:g}")
        if min_snr_db is not None and report.snr_db < min_snr_db:
            failures.append(f"{where}SNR {report.snr_db:.1f} dB < {min_snr_db:g} dB")
        if min_top1 is not None and report.top1_agreement is not None and report.top1_agreement < min_top1:
            failures.append(f"{where}top-1 agreement {report.top1_agreement:.3f} < {min_top1:g}")
    if check_delegation and not delegated:
        failures.append("not fully delegated to XNNPACK (LiteRT: is_fully_accelerated() is False)")
    top1 = [r.top1_agreement for r in outputs.values() if r.top1_agreement is not None]
    report = VerifyReport(
        quantization,
        max(r.max_rel_error for r in outputs.values()),
        min(r.snr_db for r in outputs.values()),
        min(top1) if top1 else None,
        graph.op_histogram(data),
        delegated,
        not failures,
        failures,
        outputs,
    )
    if failures:
        message = f"LiteRT parity check failed for {keras_model.name!r}: {report}"
        if on_failure == "raise":
            raise ValueError(message)
        warnings.warn(message, stacklevel=2)
    return report
