"""The demo pipeline: train BFT models and their pointwise twins, quantize, export, verify, benchmark.

A stage that fails at run time is named in the report's notes, so a failure
never looks like a result.
"""

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import sys
import tempfile
import time

import keras
import numpy as np

from keras_bft import applications
from keras_bft import quantization
from keras_bft import tflite
from keras_bft.demo import data as data_lib
from keras_bft.demo import report
from keras_bft.utils import count_macs

MODES = ("tiny", "quick", "full")

# Duration estimate (docs/demo.md, "Duration"): a QAT step in float steps, and the fixed seconds per model
# (tracing, export, LiteRT scoring and benchmark; building, tracing and exporting the QAT model).
QAT_STEP_COST = 2.5
SECONDS_PER_MODEL = 60
QAT_SECONDS_PER_MODEL = 45

# The BFT models are exported for each objective (`keras_bft.tflite.convert(objective=...)`); the first
# is the one their accuracy and twin comparisons use. Pointwise models have no butterfly to lower.
OBJECTIVES = ("latency", "size")


@dataclasses.dataclass(frozen=True)
class Candidate:
    """One model of the comparison: a builder family, a fusion and a width."""

    family: str
    fusion: str
    width: float
    options: tuple = ()  # extra builder keyword arguments, as (name, value) pairs

    @property
    def name(self):
        fusion = "BFT" if self.fusion == "butterfly" else "pointwise"
        return f"{self.family}-{fusion}-{self.width:g}"


@dataclasses.dataclass(frozen=True)
class Settings:
    """How much the demo trains. `MODES` name the presets (see `settings_for`)."""

    mode: str
    bft_widths: tuple
    twin_widths: tuple  # searched for the cheapest twin with MACs >= each BFT model
    frontier_twins: bool  # train every twin width (frontier) or only the matched twin(s)
    family: str = "MobileNetV2"
    train_per_class: int = None  # None: all training images
    test_per_class: int = None
    epochs: int = 3
    qat_epochs: int = 1  # a QAT step costs about twice a float step (docs/demo.md); --tiny turns it off
    batch_size: int = 64
    learning_rate: float = 2e-3  # peak; cosine-decayed to 0 over the float epochs
    bn_momentum: float = 0.9  # see set_bn_momentum
    image_size: int = 32
    calibration_images: int = 200
    verify_images: int = 100
    benchmark_runs: int = 50
    run_eagerly: bool = False  # tiny runs: a few eager steps cost less than tracing the graph once
    seed: int = 0


def settings_for(mode, **overrides):
    """The preset `Settings` of a mode, with optional field overrides.

    Args:
        mode: `"tiny"` (tests: seconds), `"quick"` (the default: minutes on a
            2-core laptop) or `"full"` (all of Fashion-MNIST, several widths of
            each fusion).
        **overrides: `Settings` fields to change.

    Returns:
        A `Settings`.
    """
    if mode == "tiny":
        base = Settings("tiny", bft_widths=(0.5,), twin_widths=(0.35, 0.5),
                        frontier_twins=False, train_per_class=20, test_per_class=10, epochs=1,
                        qat_epochs=0, batch_size=32, calibration_images=16, verify_images=16,
                        benchmark_runs=3, run_eagerly=True)
    elif mode == "quick":
        base = Settings("quick", bft_widths=(1.0,), twin_widths=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4),
                        frontier_twins=False, train_per_class=400, test_per_class=100, epochs=3)
    elif mode == "full":
        # Pointwise 0.25 puts BFT-1 inside the MAC frontier; pointwise 1.0 reaches the int8 latency of
        # the BFT models, so that frontier is compared too (run time: docs/results.md).
        base = Settings("full", bft_widths=(1.0, 1.4, 2.0), twin_widths=(0.25, 0.35, 0.5, 0.75, 1.0),
                        frontier_twins=True, epochs=3, benchmark_runs=100)
    else:
        raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
    fields = {f.name for f in dataclasses.fields(Settings)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown settings {unknown}. Received: overrides={overrides!r}")
    return dataclasses.replace(base, **overrides)


# ---------------------------------------------------------------------------


def build_model(candidate, input_shape, classes):
    """Builds a candidate with keras_bft.applications (logits out: int8 SOFTMAX is not XNNPACK-delegated)."""
    return getattr(applications, candidate.family + "BFT")(
        input_shape=input_shape,
        width=candidate.width,
        include_top=True,
        weights=None,
        classes=classes,
        classifier_activation=None,
        fusion=candidate.fusion,
        name=candidate.name.replace(".", "_").replace("-", "_"),
        **dict(candidate.options),
    )


def set_bn_momentum(model, momentum):
    """Caps the moving-average momentum of every BatchNormalization layer of `model`.

    keras.applications' MobileNetV2 uses 0.999, tuned for long ImageNet runs:
    after the few hundred steps of a short run its moving statistics are still
    mostly their initial values and the model predicts one class at inference.
    Momentum only changes the moving averages, not the training steps. Call it
    before the first training step (graph functions read it when traced).
    """
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.momentum = min(layer.momentum, momentum)
    return model


def _predict(model, x, batch_size=250):
    """model.predict in equal batches (the last one padded), so the predict step is traced once."""
    batch_size = min(batch_size, len(x))
    pad = -len(x) % batch_size
    padded = np.concatenate([x, np.zeros((pad, *x.shape[1:]), x.dtype)]) if pad else x
    return model.predict(padded, batch_size=batch_size, verbose=0)[:len(x)]


def _accuracy(logits, labels):
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


def _litert_accuracy(tflite_model, x, labels):
    """Accuracy of a .tflite model run in LiteRT on each image (batch 1, as exported)."""
    return _accuracy(np.concatenate(tflite.predict(tflite_model, x)), labels)  # one (1, classes) array a sample


# ---------------------------------------------------------------------------
# Output folder: write into a temp sibling and move the results in at the end. A manifest lists what the demo
# wrote, so a later run (with --force) replaces exactly those files and never anything else.

MANIFEST = ".keras-bft-demo.json"


def write_manifest(folder):
    """Records every file under `folder` (but the manifest) as written by the demo."""
    files = sorted(
        os.path.relpath(os.path.join(root, name), folder)
        for root, _, names in os.walk(folder)
        for name in names
        if name != MANIFEST or root != folder
    )
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump({"written_by": "keras-bft demo", "files": files}, f, indent=1)


def demo_files(folder):
    """The files an earlier demo recorded in `folder`'s manifest (relative paths), or None without a valid one.

    A manifest naming a path outside the folder is not valid: nothing outside is ever removed.
    """
    try:
        with open(os.path.join(folder, MANIFEST)) as f:
            files = json.load(f)["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, list):
        return None
    out = set()
    for name in files:
        if not isinstance(name, str):
            return None
        norm = os.path.normpath(name)
        if os.path.isabs(norm) or norm.split(os.sep)[0] in (os.pardir, os.curdir, ""):
            return None
        out.add(norm)
    return out


def check_output_dir(output_dir, force, name="output_dir"):
    """Raises ValueError unless the demo may write to `output_dir`.

    It may if the folder does not exist or is empty, or (with `force`) if an
    earlier demo wrote it: then its files are replaced and any other file in
    it is kept. A non-empty folder the demo did not write is refused even
    with `force`: the demo never deletes what it did not write.
    """
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"`{name}` is a file, not a folder. Received: {name}={output_dir!r}")
    if not os.path.isdir(output_dir) or not os.listdir(output_dir):
        return
    if demo_files(output_dir) is None:
        found = sorted(os.listdir(output_dir))
        shown = ", ".join(found[:5]) + (f" and {len(found) - 5} more" if len(found) > 5 else "")
        raise ValueError(
            f"`{name}` is a non-empty folder that keras-bft demo did not write (it holds {shown}); "
            "the demo only replaces its own earlier results (with --force), so choose a new or empty "
            f"folder. Received: {name}={output_dir!r}"
        )
    if not force:
        raise ValueError(
            f"`{name}` holds an earlier demo's results; pass --force to replace them (other files "
            f"in it are kept). Received: {name}={output_dir!r}"
        )


def default_output_dir(mode):
    return os.path.abspath(f"keras-bft-demo-{mode}-{time.strftime('%Y%m%d-%H%M%S')}")


def publish(tmp_dir, output_dir):
    """Moves the results of `tmp_dir` into `output_dir`; returns where they went.

    A missing or empty `output_dir` is replaced by `tmp_dir` (one rename).
    Else the files an earlier demo listed in its manifest are removed and the
    new ones moved in, other files untouched. If the folder changed during
    the run so that this would remove or overwrite a file the demo did not
    write, nothing there is touched and the results go to a new sibling.
    """
    if os.path.isdir(output_dir) and not os.listdir(output_dir):
        os.rmdir(output_dir)
    if not os.path.exists(output_dir):
        os.replace(tmp_dir, output_dir)
        return output_dir
    old = demo_files(output_dir) if os.path.isdir(output_dir) else None
    new = [os.path.relpath(os.path.join(root, n), tmp_dir) for root, _, names in os.walk(tmp_dir) for n in names]
    clashes = old is None or any(
        os.path.lexists(os.path.join(output_dir, rel)) and rel not in old and rel != MANIFEST for rel in new
    )
    if clashes:
        elsewhere, n = output_dir + time.strftime("-%Y%m%d-%H%M%S"), 1
        while os.path.lexists(elsewhere):
            elsewhere, n = f"{output_dir}{time.strftime('-%Y%m%d-%H%M%S')}-{n}", n + 1
        os.replace(tmp_dir, elsewhere)
        return elsewhere
    root = os.path.realpath(output_dir)
    for rel in sorted(old, key=lambda r: -r.count(os.sep)):
        path = os.path.join(output_dir, rel)
        if os.path.commonpath([root, os.path.realpath(os.path.dirname(path))]) != root:
            continue  # a listed file behind a symlink out of the folder: not the demo's to remove
        if os.path.islink(path) or os.path.isfile(path):
            os.remove(path)
        parent = os.path.dirname(path)
        if parent != output_dir and os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
    for rel in new:
        target = os.path.join(output_dir, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        os.replace(os.path.join(tmp_dir, rel), target)
    shutil.rmtree(tmp_dir)
    return output_dir


# ---------------------------------------------------------------------------


@dataclasses.dataclass(eq=False)  # identity: results key dicts
class Result:
    """Everything measured about one candidate (None: not measured; see `notes`)."""

    name: str
    family: str
    fusion: str
    width: float
    params: int = None
    macs: int = None
    float_acc: float = None
    ptq_acc: float = None
    qat_acc: float = None
    float_tflite_acc: float = None
    int8_size: int = None
    int8_model: str = None  # file name in the output folder
    qat_size: int = None
    ptq_parity: dict = None
    qat_parity: dict = None
    latency_ms: dict = None  # {threads: median ms} of the int8 (PTQ) model
    latency_p90_ms: dict = None
    # The int8 (PTQ) file exported with objective="size" (BFT models): its size, name and latency.
    size_objective_size: int = None
    size_objective_model: str = None
    size_objective_latency_ms: dict = None
    lowering: dict = None  # {objective: the exporter's LoweringReport, as text}
    twin: str = None  # name of the matched pointwise twin (BFT rows)
    train_seconds: float = None
    notes: list = dataclasses.field(default_factory=list)


class Demo:
    """Runs the demo: `Demo(settings, dataset, output_dir).run()`; results in `self.results`."""

    def __init__(self, settings, dataset, output_dir, log=None):
        self.settings = settings
        self.dataset = dataset
        self.output_dir = output_dir
        # Flushed: the lines must interleave with Keras' progress output when piped to a file.
        self.log = log or (lambda *args: print(*args, flush=True))
        self.results = []
        self.notes = []  # pipeline-wide notes (skipped stages and why)
        self._reports = {}  # (result name, objective) -> the exporter's LoweringReport

    # -- data ---------------------------------------------------------------

    def _prepare_data(self):
        s, ds = self.settings, self.dataset
        x_train, y_train, x_test, y_test = ds.x_train, ds.y_train, ds.x_test, ds.y_test
        if s.train_per_class:
            idx = data_lib.stratified_indices(y_train, s.train_per_class, seed=s.seed)
            x_train, y_train = x_train[idx], y_train[idx]
        # Whole batches only: a smaller last batch would trace the train step a second time.
        keep = np.random.default_rng(s.seed).permutation(len(x_train))
        keep = keep[:max(len(keep) // s.batch_size, 1) * s.batch_size]
        x_train, y_train = x_train[keep], y_train[keep]
        if s.test_per_class:
            idx = data_lib.stratified_indices(y_test, s.test_per_class, seed=s.seed + 1)
            x_test, y_test = x_test[idx], y_test[idx]
        self.x_train = data_lib.prepare_images(x_train, s.image_size)
        self.x_test = data_lib.prepare_images(x_test, s.image_size)
        self.y_train, self.y_test = y_train, y_test
        self._steps_per_epoch = -(-len(self.x_train) // s.batch_size)  # fit runs a short last batch too
        self.classes = len(ds.class_names)
        self.log(f"Training on {len(self.x_train)} images, testing on {len(self.x_test)} "
                 f"({s.image_size}x{s.image_size}x{self.x_train.shape[-1]}).")

    # -- models -------------------------------------------------------------

    def _build(self, candidate):
        keras.utils.set_random_seed(self.settings.seed)
        model = build_model(candidate, self.x_train.shape[1:], self.classes)
        set_bn_momentum(model, self.settings.bn_momentum)
        # Decayed to 0: with a constant rate the last-epoch noise is as large as the differences compared.
        schedule = keras.optimizers.schedules.CosineDecay(
            self.settings.learning_rate, decay_steps=self._steps_per_epoch * self.settings.epochs)
        model.compile(
            optimizer=keras.optimizers.Adam(schedule),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            run_eagerly=self.settings.run_eagerly,
        )
        return model

    def _plan_candidates(self):
        """Builds every candidate model; picks each BFT model's twin: the cheapest pointwise width with MACs >= its."""
        s = self.settings
        twins = {}
        for width in s.twin_widths:
            c = Candidate(s.family, "pointwise", width)
            model = self._build(c)
            twins[c] = (model, count_macs(model))
        plan = []
        chosen_twins = set()
        for width in s.bft_widths:
            c = Candidate(s.family, "butterfly", width)
            model = self._build(c)
            macs = count_macs(model)
            matched = [t for t, (_, m) in twins.items() if m >= macs]
            twin = min(matched, key=lambda t: twins[t][1]) if matched else None
            if twin is None:
                self.notes.append(
                    f"{c.name} ({macs:,} MACs) has no pointwise twin with at least as many MACs "
                    f"among widths {s.twin_widths}; compared with the largest."
                )
                twin = max(twins, key=lambda t: twins[t][1])
            chosen_twins.add(twin)
            plan.append((c, model, macs, twin.name))
        for twin, (model, macs) in sorted(twins.items(), key=lambda kv: kv[1][1]):
            if s.frontier_twins or twin in chosen_twins:
                plan.append((twin, model, macs, None))
        return plan

    def _estimate_seconds(self, plan):
        """Times a few training steps of each model, extrapolates to the whole run."""
        s = self.settings
        steps = self._steps_per_epoch
        total = 0.0
        for _, model, _, _ in plan:
            xb, yb = self.x_train[:s.batch_size], self.y_train[:s.batch_size]
            with _quiet_tensorflow_logger():  # each model's first call "retraces": expected here
                model.train_on_batch(xb, yb)  # traces the train step
            start = time.perf_counter()
            for _ in range(2):
                model.train_on_batch(xb, yb)
            per_step = (time.perf_counter() - start) / 2
            # The constants are fitted to measured runs (docs/demo.md, "Duration").
            total += (
                per_step * steps * (s.epochs + QAT_STEP_COST * s.qat_epochs)
                + SECONDS_PER_MODEL + QAT_SECONDS_PER_MODEL * (s.qat_epochs > 0)
            )
        return total + 20  # data preparation

    # -- stages -------------------------------------------------------------

    def _train(self, model, result):
        s = self.settings
        start = time.perf_counter()
        model.fit(self.x_train, self.y_train, batch_size=s.batch_size, epochs=s.epochs,
                  shuffle=True, verbose=1 if self._interactive else 2)
        result.train_seconds = time.perf_counter() - start
        result.float_acc = _accuracy(_predict(model, self.x_test), self.y_test)

    def _export(self, model, result):
        """The int8 (PTQ) files: latency objective (scored), and size objective for BFT models.

        Returns `{objective: path}`.
        """
        s = self.settings
        calib = self.x_train[:s.calibration_images]
        objectives = OBJECTIVES if result.fusion == "butterfly" else OBJECTIVES[:1]
        paths, result.lowering = {}, {}
        for objective in objectives:
            converted = tflite.convert(
                model, quantization="int8", representative_data=calib, objective=objective
            )
            int8, lowering = converted.tflite_bytes, converted.report
            suffix = "-int8.tflite" if objective == OBJECTIVES[0] else f"-int8-{objective}.tflite"
            path = os.path.join(self.tmp_dir, "models", result.name + suffix)
            with open(path, "wb") as f:
                f.write(int8)
            paths[objective] = path
            if lowering.decisions:
                self._reports[(result.name, objective)] = lowering
                result.lowering[objective] = str(lowering)
            if objective == OBJECTIVES[0]:
                result.int8_model = os.path.relpath(path, self.tmp_dir)
                result.int8_size = len(int8)
                result.ptq_acc = _litert_accuracy(int8, self.x_test, self.y_test)
                result.ptq_parity = _parity(tflite.verify(int8, model, self.x_test[:s.verify_images],
                                                          quantization="int8", on_failure="warn"))
            else:
                result.size_objective_model = os.path.relpath(path, self.tmp_dir)
                result.size_objective_size = len(int8)
        return paths

    def _qat(self, model, result):
        s = self.settings
        # The QAT model takes the exporter's forms for the default objective: its int8 file is
        # lowered like the PTQ file above.
        qmodel = quantization.quantize_model(model, calibration_data=self.x_train[:s.calibration_images])
        # Fine-tuning a converged model (the float schedule ended at 0): a small peak decayed to 0, not a
        # constant restart rate (measured in docs/results.md).
        schedule = keras.optimizers.schedules.CosineDecay(
            s.learning_rate / 20, decay_steps=self._steps_per_epoch * s.qat_epochs)
        qmodel.compile(
            optimizer=keras.optimizers.Adam(schedule),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            run_eagerly=s.run_eagerly,
        )
        qmodel.fit(self.x_train, self.y_train, batch_size=s.batch_size, epochs=s.qat_epochs,
                   shuffle=True, verbose=1 if self._interactive else 2)
        int8 = tflite.convert(qmodel, quantization="int8").tflite_bytes
        path = os.path.join(self.tmp_dir, "models", result.name + "-qat-int8.tflite")
        with open(path, "wb") as f:
            f.write(int8)
        result.qat_size = len(int8)
        result.qat_acc = _litert_accuracy(int8, self.x_test, self.y_test)
        result.qat_parity = _parity(tflite.verify(int8, qmodel, self.x_test[:s.verify_images],
                                                  quantization="int8", on_failure="warn"))

    def _benchmark(self, paths):
        """Times every int8 file interleaved; `paths` maps a result to `{objective: path}`."""
        entries = [(r, objective, path) for r, files in paths.items() for objective, path in files.items()]
        names = [r.name + ("" if objective == OBJECTIVES[0] else f" ({objective})") for r, objective, _ in entries]
        rows = tflite.benchmark([path for _, _, path in entries], threads=(1, 2),
                                num_runs=self.settings.benchmark_runs, names=names,
                                verbose=1 if self._interactive else 0)
        by_name = dict(zip(names, entries))
        for row in rows:
            result, objective, _ = by_name[row["name"]]
            threads = int(row["threads"])
            if objective == OBJECTIVES[0]:
                result.latency_ms = {**(result.latency_ms or {}), threads: float(row["median_ms"])}
                result.latency_p90_ms = {**(result.latency_p90_ms or {}), threads: float(row["p90_ms"])}
            else:
                result.size_objective_latency_ms = {
                    **(result.size_objective_latency_ms or {}), threads: float(row["median_ms"])
                }
            report = self._reports.get((result.name, objective))
            if report is not None and threads == 1:
                result.lowering[objective] = str(report.with_measurement(row["median_ms"]))
            if not row["fully_accelerated"] and threads == 1:
                result.notes.append(
                    f"int8 model ({objective} objective) NOT fully delegated to XNNPACK (LiteRT benchmark tool)"
                )

    # -- driver -------------------------------------------------------------

    def run(self, interactive=True):
        self._interactive = interactive
        parent = os.path.dirname(os.path.abspath(self.output_dir)) or "."
        os.makedirs(parent, exist_ok=True)
        self.tmp_dir = tempfile.mkdtemp(prefix=".keras-bft-demo-", dir=parent)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.tmp_dir, 0o777 & ~umask)  # mkdtemp's 0700 would outlive the rename
        try:
            os.makedirs(os.path.join(self.tmp_dir, "models"))
            self._run()
            report.write_report(self, self.tmp_dir)
            write_manifest(self.tmp_dir)
            published = publish(self.tmp_dir, self.output_dir)
            if published != self.output_dir:
                self.log(f"{self.output_dir} changed during the run and now holds files the demo did not "
                         f"write; left it alone and wrote the results to {published}")
                self.output_dir = published
        finally:
            if os.path.isdir(self.tmp_dir):
                shutil.rmtree(self.tmp_dir)
        return self.results

    def _run(self):
        s = self.settings
        self._prepare_data()
        plan = self._plan_candidates()
        self.log("Models (BFT and the cheapest pointwise twin with at least its MACs):")
        for c, model, macs, twin in plan:
            self.log(f"  {c.name:<28} {model.count_params():>10,} params {macs:>12,} MACs"
                     + (f"  twin: {twin}" if twin else ""))
        estimate = self._estimate_seconds(plan)
        self.log(f"Expected duration: about {_minutes(estimate)} on this machine "
                 f"({len(plan)} models x {s.epochs} epochs + {s.qat_epochs} QAT epoch(s)).")
        if s.qat_epochs == 0:
            self.notes.append("skipped: quantization-aware training (--qat-epochs 0; --qat-epochs 1 turns it on)")

        paths = {}
        for i, (c, model, macs, twin) in enumerate(plan):
            result = Result(c.name, c.family, c.fusion, c.width, params=model.count_params(),
                            macs=macs, twin=twin)
            self.results.append(result)
            self.log(f"[{i + 1}/{len(plan)}] {c.name}: training {s.epochs} epoch(s)")
            self._train(model, result)
            self.log(f"  float accuracy {result.float_acc:.4f}")
            try:
                paths[result] = self._export(model, result)
                line = f"  int8 (PTQ) accuracy {result.ptq_acc:.4f}, {result.int8_size / 1024:.0f} KiB"
                if result.size_objective_size is not None:
                    line += f" ({result.size_objective_size / 1024:.0f} KiB with objective='size')"
                self.log(line)
            except Exception as e:  # Report the failure in the table; keep the other models going.
                result.notes.append(f"int8 export failed: {type(e).__name__}: {e}")
                self.log("  " + result.notes[-1])
            if s.qat_epochs > 0:
                try:
                    self.log(f"  quantization-aware training, {s.qat_epochs} epoch(s)")
                    self._qat(model, result)
                    self.log(f"  int8 (QAT) accuracy {result.qat_acc:.4f}")
                except Exception as e:
                    result.notes.append(f"QAT failed: {type(e).__name__}: {e}")
                    self.log("  " + result.notes[-1])
        if paths:
            self.log("Benchmarking the int8 models in LiteRT (1 and 2 threads)...")
            log = os.path.join(self.tmp_dir, "litert.log")
            try:
                with _native_stderr_to(log):  # the runtime's own logging, kept in litert.log
                    self._benchmark(paths)
            except Exception as e:
                self.notes.append(f"benchmark failed: {type(e).__name__}: {e}")
                self.log(self.notes[-1])


@contextlib.contextmanager
def _quiet_tensorflow_logger():
    logger = logging.getLogger("tensorflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def _native_stderr_to(path):
    """Sends file descriptor 2 (LiteRT's C++ INFO logging) to `path` for the duration."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as sink:
        os.dup2(sink.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _parity(report):
    keys = ("max_rel_error", "top1_agreement", "snr_db", "fully_delegated")
    return {k: getattr(report, k, None) for k in keys}


def _minutes(seconds):
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"
