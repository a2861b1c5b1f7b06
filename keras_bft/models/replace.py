"""`replace_pointwise`: a trained Keras model with its 1x1 convs and Dense layers as butterflies.

The new model is built with `keras.models.clone_model` and a `clone_function`:
every selected layer becomes a `ButterflyFusion` with the same name, bias and
activation (so checkpoints and feature taps by name keep working), every other
layer is a fresh copy that gets the trained weights of the original. The
original model is not modified.

The butterflies start from the trained kernels (`init="fit"`, see
`keras_bft.ops.fit`) or from their own random init (`init="random"`); either
way the report gives each one's relative Frobenius error against the kernel
it replaces. See docs/accuracy.md for what to do next (fine-tune, distill).
"""

import dataclasses
import warnings

import keras
import numpy as np
from keras import ops

from keras_bft.applications import blocks
from keras_bft.ops import arguments
from keras_bft.ops import fit as fit_lib
from keras_bft.utils import macs as macs_lib
from keras_bft.utils import selection

INITS = ("fit", "random")


@dataclasses.dataclass
class ReplacedLayer:
    """One layer `replace_pointwise` turns (or would turn) into a `ButterflyFusion`.

    Attributes:
        path: the layer name (`outer/inner` inside a nested model).
        kind: `"Conv2D"` or `"Dense"`.
        in_channels, out_channels: its channel counts.
        params_before, params_after: its weights (bias included).
        macs_before, macs_after: its multiply-accumulates for one example
            (None when `count_macs` cannot count the model, e.g. dynamic
            spatial dimensions).
        rel_error: `||B - W||_F / ||W||_F` of the butterfly's dense matrix `B`
            (residual included, as the layer computes it in float32) against
            the trained kernel `W`; None in a dry run.
    """

    path: str
    kind: str
    in_channels: int
    out_channels: int
    params_before: int
    params_after: int
    macs_before: object
    macs_after: object
    rel_error: object


@dataclasses.dataclass
class ReplaceReport:
    """What `replace_pointwise` changed (or, in a dry run, would change).

    Attributes:
        layers: a `ReplacedLayer` per butterfly.
        kept: paths of the 1x1 Conv2D / Dense layers `select` left dense.
        init: `"fit"` or `"random"`.
        dry_run: whether this is a dry run (no weights set, no model returned).
        params_before, params_after: parameters of the whole model.
        macs_before, macs_after: MACs of the whole model for one example, or
            None (`macs_note` says why).
        macs_note: why MACs are missing, else None.
    """

    layers: list
    kept: list
    init: str
    dry_run: bool
    params_before: int
    params_after: int
    macs_before: object
    macs_after: object
    macs_note: object = None

    def to_markdown(self):
        """The per-layer table and the totals, as Markdown."""

        def number(value):
            return "n/a" if value is None else f"{value:,}"

        lines = [
            "| layer | type | in -> out | params | MACs | rel. error |",
            "|---|---|---|---:|---:|---:|",
        ]
        for r in self.layers:
            error = "n/a" if r.rel_error is None else f"{r.rel_error:.3f}"
            lines.append(
                f"| {r.path} | {r.kind} | {r.in_channels} -> {r.out_channels} | "
                f"{r.params_before:,} -> {r.params_after:,} | "
                f"{number(r.macs_before)} -> {number(r.macs_after)} | {error} |"
            )
        lines.append(
            f"| **model** | | | {self.params_before:,} -> {self.params_after:,} | "
            f"{number(self.macs_before)} -> {number(self.macs_after)} | |"
        )
        return "\n".join(lines)

    def __str__(self):
        head = (
            f"{'Would replace' if self.dry_run else 'Replaced'} {len(self.layers)} layer(s) by "
            f"ButterflyFusion (init={self.init!r}); kept dense: {len(self.kept)}"
        )
        note = f"\nMACs not counted: {self.macs_note}" if self.macs_note else ""
        return f"{head}\n{self.to_markdown()}{note}"


def pointwise_site(layer, path=None):
    """The `PointwiseSite` of `layer` if `replace_pointwise` can replace it, else None.

    Candidates: a built `Conv2D` with a 1x1 kernel, stride 1, no dilation
    and no groups (any data_format), or a built `Dense` (exact types, not
    subclasses, whose behaviour may differ).
    """
    if type(layer) is keras.layers.Conv2D:
        if (
            tuple(layer.kernel_size) != (1, 1)
            or tuple(layer.strides) != (1, 1)
            or tuple(layer.dilation_rate) != (1, 1)
            or layer.groups != 1
            or not layer.built
        ):
            return None
        in_channels, out_channels = layer.kernel.shape[2:]
    elif type(layer) is keras.layers.Dense and layer.built:
        in_channels, out_channels = layer.kernel.shape
    else:
        return None
    return selection.PointwiseSite(
        layer.name, path or layer.name, int(in_channels), int(out_channels), type(layer).__name__, layer
    )


def _layers(model, prefix=""):
    """`(path, layer)` for every layer, entering nested models (the paths count_macs uses)."""
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            yield from _layers(layer, f"{prefix}{layer.name}/")
        else:
            yield f"{prefix}{layer.name}", layer


def _macs_by_path(model):
    total, rows = macs_lib.count_macs(model, breakdown=True)
    by_path = {}
    for row in rows:
        by_path[row["name"]] = by_path.get(row["name"], 0) + row["macs"]
    return total, by_path


def replace_pointwise(
    model,
    *,
    butterfly_k=4,
    radices=None,
    num_stages=None,
    residual=True,
    rectangular="min",
    select=None,
    init="fit",
    lowering="auto",
    fit_sweeps=30,
    dry_run=False,
    return_report=False,
):
    """Returns a copy of a trained model whose 1x1 Conv2D and Dense layers are `ButterflyFusion`s.

    Every selected layer becomes a `ButterflyFusion` with the same name,
    output channels, bias (its trained values) and activation, reading the
    same channel axis (Conv2D's `data_format`; a Dense mixes the last axis).
    Every other layer keeps its trained weights bit for bit. Sequential,
    functional and nested models (and multi-output ones) work; the original
    model is left unchanged. The copy is not compiled.

    Args:
        model: a built functional or Sequential `keras.Model`.
        butterfly_k, radices, num_stages, rectangular: the butterfly plan of
            each new layer, as in `ButterflyFusion`. `radices` may be a dict
            `{channels: radices}` (as in the builders) since layers differ in
            width.
        residual: the butterflies' first-to-last residual (the fit then
            matches `W - I`).
        select: which candidates become butterflies: `None` (those with at
            least 64 input and 64 output channels; see docs/accuracy.md for
            why), a list of layer names (or `outer/inner` paths), or a
            function of a `keras_bft.utils.selection.PointwiseSite` (name,
            path, in_channels, out_channels, kind, layer) returning a bool.
        init: `"fit"` (stage weights whose product best matches the trained
            kernel, `keras_bft.ops.fit`) or `"random"` (the layer's own
            initializer; only the bias is carried over).
        lowering: the `lowering` of the new layers.
        fit_sweeps: at most this many alternating-least-squares sweeps of the
            fit (three or more stages).
        dry_run: only report what would change (layers, params, MACs) and
            return the report.
        return_report: also return the `ReplaceReport`.

    Returns:
        The new model; `(model, report)` with `return_report=True`; the
        report alone with `dry_run=True`.

    Example:

    ```python
    inputs = keras.Input((16, 16, 64))
    x = keras.layers.Conv2D(128, 1, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(10)(keras.layers.Flatten()(x)))
    print(keras_bft.replace_pointwise(model, dry_run=True))
    bft, report = keras_bft.replace_pointwise(model, return_report=True)
    ```
    """
    if not isinstance(model, keras.Model):
        raise ValueError(f"`model` must be a keras.Model. Received: model={model!r}")
    if init not in INITS:
        raise ValueError(f"`init` must be one of {INITS}. Received: init={init!r}")
    for name, value in (("residual", residual), ("dry_run", dry_run), ("return_report", return_report)):
        arguments.boolean(name, value)
    fit_sweeps = arguments.positive_int("fit_sweeps", fit_sweeps, minimum=0)
    if not model.built:
        raise ValueError(
            f"`model` must be built (call it once, or give it an Input). Received: model={model.name!r}"
        )
    # A wholly frozen model is a frozen copy (a Distiller's teacher), not a choice of layers to keep fixed:
    # its replacement is made to be fine-tuned, so it comes back trainable.
    unfreeze = bool(model.weights) and not model.trainable_weights
    if unfreeze:
        warnings.warn(
            f"Every layer of model {model.name!r} is frozen (trainable=False, e.g. a Distiller's teacher); "
            "the returned model is trainable (set `trainable` on its layers to freeze some).",
            stacklevel=2,
        )
    chooser = selection.Selection(select, default=selection.at_least_64_channels)
    spec = blocks.fusion_spec("butterfly", butterfly_k, radices, num_stages, chooser, rectangular)

    chosen, kept, visited = {}, [], set()
    for path, layer in _layers(model):
        site = None if id(layer) in visited else pointwise_site(layer, path)
        visited.add(id(layer))
        if site is None:
            continue
        if spec.selects(site.in_channels, site.out_channels, site.name, site.kind, layer, path):
            chosen[id(layer)] = site
        else:
            kept.append(path)
    chooser.check_names()

    pairs = []

    def clone(layer):
        site = chosen.get(id(layer))
        if site is None:
            new = layer.__class__.from_config(layer.get_config())
            if unfreeze:
                new.trainable = True
        else:
            new = spec.butterfly(
                site.in_channels,
                site.out_channels,
                layer.name,
                residual=residual,
                use_bias=layer.use_bias,
                activation=layer.activation,
                data_format=layer.data_format if site.kind == "Conv2D" else "channels_last",
                lowering=lowering,
                dtype=layer.dtype_policy,
                trainable=layer.trainable or unfreeze,
            )
        pairs.append((layer, new))
        return new

    try:
        new_model = keras.models.clone_model(model, clone_function=clone, recursive=True)
    except ValueError as error:
        raise ValueError(
            "replace_pointwise needs a functional or Sequential model (Keras cannot clone "
            f"subclassed models layer by layer). Received: model={model.name!r} of type "
            f"{type(model).__name__}. Keras said: {error}"
        ) from error

    rows = []
    for old, new in pairs:
        site = chosen.get(id(old))
        if site is None:
            if not dry_run:
                new.set_weights(old.get_weights())
            continue
        kernel = np.asarray(ops.convert_to_numpy(old.kernel), dtype=np.float64)
        kernel = kernel.reshape(site.in_channels, site.out_channels)
        error = None
        if not dry_run:
            if init == "fit":
                fitted = fit_lib.fit_kernels(kernel, new.plan, residual=residual, sweeps=fit_sweeps)
                for variable, value in zip(new.kernels, fitted.kernels):
                    variable.assign(np.asarray(value, dtype=variable.dtype))
            if old.use_bias:
                new.bias.assign(ops.convert_to_numpy(old.bias))
            scale = float(np.linalg.norm(kernel)) or 1.0
            error = float(np.linalg.norm(new.dense_kernel().astype(np.float64) - kernel)) / scale
        rows.append(
            ReplacedLayer(
                site.path, site.kind, site.in_channels, site.out_channels,
                old.count_params(), new.count_params(), None, None, error,
            )
        )

    macs_before = macs_after = note = None
    try:
        macs_before, before = _macs_by_path(model)
        macs_after, after = _macs_by_path(new_model)
    except ValueError as error:
        note = str(error)
    else:
        for row in rows:
            row.macs_before, row.macs_after = before.get(row.path), after.get(row.path)
    report = ReplaceReport(
        rows, kept, init, dry_run, model.count_params(), new_model.count_params(),
        macs_before, macs_after, note,
    )
    if dry_run:
        return report
    return (new_model, report) if return_report else new_model
