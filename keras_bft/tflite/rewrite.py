"""The exporter's rewrite pass: a new model in which every layer XNNPACK would not run well is replaced.

`prepare_for_export` reads the model's layer graph (`keras_bft.utils.LayerGraph`),
finds each ButterflyFusion's input size at the export shape, lets
`search.decide` pick each one's form for the objective, and rebuilds the
graph with the export layers of `export_layers`: the chosen butterfly forms,
int8 hard-swish as MUL/ADD/MUL, ShuffleNet's ChannelSplit (SPLIT_V) as SPLIT or
strided slices. Every other layer is `Borrowed`: the caller's model is never
called on new inputs, so it is left exactly as it was.

A quantization-aware model (`keras_bft.quantization.quantize_model`) already
runs each butterfly in the form chosen when it was quantized; the pass reports
those forms and keeps them.
"""

import warnings

import keras
import numpy as np

from keras_bft.layers.butterfly_fusion import ButterflyFusion
from keras_bft.layers.channel import ChannelSplit
from keras_bft.quantization import QuantizedLinear
from keras_bft.tflite import export_layers
from keras_bft.tflite import search
from keras_bft.tflite.lowering_report import LoweringReport
from keras_bft.utils.layer_graph import LayerGraph


def _is_hard_swish(layer):
    if type(layer) is not keras.layers.Activation:
        return False
    return getattr(layer.activation, "__name__", "") in ("hard_swish", "hard_silu")


def _positions(shape, layer):
    """Pixels of an input of `shape` (batch included), or None if a dimension is unknown."""
    axis = layer.channel_axis(len(shape)) % len(shape)
    dims = [d for i, d in enumerate(shape) if i != axis]
    if any(d is None for d in dims):
        return None
    return int(np.prod(dims, dtype=np.int64))


def _can_fold(layer, shape):
    return len(shape) == 2 or layer.channel_axis(len(shape)) == -1


def _fixed_form(layer):
    """(kind, merge_stages) of a quantization-aware butterfly, as `quantize_model` fixed it."""
    inner = layer.layer
    if inner.lowering == "dense":
        return ("dense", (inner.plan.num_stages,))
    return ("stages", tuple(inner.merge_stages or (1,) * inner.plan.num_stages))


def _butterfly_of(layer):
    """The ButterflyFusion a graph call runs (itself, or inside a QAT wrapper), or None."""
    if isinstance(layer, ButterflyFusion):
        return layer
    if isinstance(layer, QuantizedLinear) and isinstance(layer.layer, ButterflyFusion):
        return layer.layer
    return None


class _Pass:
    """One model's rewrite: its sites, their decisions, the rebuilt model (nested models recursively)."""

    def __init__(self, model, quantization, shapes, prefix=""):
        self.quantization = quantization
        self.prefix = prefix
        self.graph = LayerGraph(model, caller="The exporter's rewrite")
        self.shapes = [tuple(s) for s in shapes]
        self.notes = []
        self.sites = []  # (call, Site)
        self.linear_hard_swish = set()  # id(call) of hard-swish calls exported as x / 2
        self.nested = {}  # id(call) -> _Pass
        self._static = None
        self._collect()

    def _static_shapes(self):
        """Input shape of each call at the export shape (a symbolic run of the graph, once)."""
        if self._static is None:
            static = self.graph.rebuild(
                lambda step, args, kwargs: _borrow(step.calls[0].layer)(*args, **kwargs),
                inputs=self.graph.new_inputs(self.shapes),
            )
            static_calls = LayerGraph(static).calls
            self._static = {
                id(call): static_call.input_shape for call, static_call in zip(self.graph.calls, static_calls)
            }
        return self._static

    def _input_shape(self, call):
        shape = call.input_shape
        batch = self.shapes[0][0]
        if any(d is None for d in shape[1:]):
            shape = self._static_shapes()[id(call)]
        return (batch, *shape[1:])

    def _collect(self):
        for call in self.graph.calls:
            layer = call.layer
            if isinstance(layer, keras.Model):
                try:
                    shapes = [(self.shapes[0][0], *tuple(t.shape)[1:]) for t in call.inputs]
                    if any(d is None for s in shapes for d in s[1:]):
                        shapes = [self._static_shapes()[id(call)]]
                    self.nested[id(call)] = _Pass(layer, self.quantization, shapes, f"{self.prefix}{layer.name}/")
                except ValueError as error:
                    self.notes.append(f"nested model {layer.name!r} kept as trained: {error}")
                continue
            butterfly = _butterfly_of(layer)
            if butterfly is None or butterfly.plan is None:
                continue
            shape = self._input_shape(call)
            positions = _positions(shape, butterfly)
            name = f"{self.prefix}{butterfly.name}"
            if positions is None:
                self.notes.append(f"{name!r} kept as trained: its input shape {shape} is not static")
                continue
            consumers = self.graph.consumers(call.outputs[0])
            followed_by_bn = bool(consumers) and all(
                isinstance(c.layer, keras.layers.BatchNormalization) for c in consumers
            )
            fixed = _fixed_form(layer) if butterfly is not layer else None
            site = search.Site(name, butterfly, positions, _can_fold(butterfly, shape), followed_by_bn, fixed)
            self.sites.append((call, site))

    def all_sites(self):
        sites = [site for _, site in self.sites]
        for nested in self.nested.values():
            sites.extend(nested.all_sites())
        return sites

    def all_notes(self):
        notes = list(self.notes)
        for nested in self.nested.values():
            notes.extend(nested.all_notes())
        return notes

    def rebuild(self, decisions):
        """The export model, or None when nothing in it changes."""
        by_call = {id(call): decisions[site] for call, site in self.sites if site.fixed is None}
        frozen = {}
        for call, site in self.sites:
            if site.fixed is not None:
                new = export_layers.frozen_quantized_fusion(call.layer, self._input_shape(call))
                if new is not None:
                    frozen[id(call)] = new
        nested_models = {key: p.rebuild(decisions) for key, p in self.nested.items()}
        split_or_swish = any(
            isinstance(c.layer, ChannelSplit) or (self.quantization == "int8" and _is_hard_swish(c.layer))
            for c in self.graph.calls
        )
        if not (by_call or frozen or split_or_swish or any(m is not None for m in nested_models.values())):
            return None
        replaced = {}

        def build(step, args, kwargs):
            call = step.calls[0]
            layer = call.layer
            if id(call) in nested_models:
                nested = nested_models[id(call)]
                return (nested if nested is not None else _borrow(layer))(*args, **kwargs)
            if id(call) in frozen:
                return frozen[id(call)](*args, **kwargs)
            if id(call) in by_call:
                if id(layer) not in replaced:
                    replaced[id(layer)] = _export_form(layer, by_call[id(call)], self._input_shape(call))
                return replaced[id(layer)](*args, **kwargs)
            if isinstance(layer, ChannelSplit):
                axis, first, _ = layer.split_sizes(call.input_shape)
                return export_layers.SplitAsBuiltin(axis, first, name=layer.name)(*args, **kwargs)
            if self.quantization == "int8" and _is_hard_swish(layer):
                linear = id(call) in self.linear_hard_swish
                return export_layers.HardSwishAsProduct(linear=linear, name=layer.name)(*args, **kwargs)
            return _borrow(layer)(*args, **kwargs)

        return self.graph.rebuild(build, inputs=self.graph.new_inputs(self.shapes))


def small_range_hard_swish(graph, samples):
    """The hard-swish calls of `graph` whose inputs stay within `HARD_SWISH_LINEAR_BELOW` of 0 on `samples`.

    Args:
        graph: a `LayerGraph` (its top-level calls are probed).
        samples: calibration samples, each a list of batch-1 arrays in the
            model's input order.

    Returns:
        A set of call ids (`id(call)`).
    """
    calls = [call for call in graph.calls if _is_hard_swish(call.layer)]
    if not calls or not samples:
        return set()
    model = graph.model
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    probe = keras.Model(inputs, [call.inputs[0] for call in calls])
    peaks = np.zeros(len(calls))
    for start in range(0, len(samples), 16):  # batches of samples: one probe call each
        batch = [np.concatenate(arrays) for arrays in zip(*samples[start : start + 16])]
        outputs = probe(batch[0] if len(batch) == 1 else batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        peaks = np.maximum(peaks, [np.max(np.abs(keras.ops.convert_to_numpy(o))) for o in outputs])
    return {id(call) for call, peak in zip(calls, peaks) if peak < export_layers.HARD_SWISH_LINEAR_BELOW}


def _borrow(layer):
    if not isinstance(layer, keras.layers.Layer):
        return layer  # a keras.ops operation called on the graph's tensors: stateless
    return export_layers.Borrowed(layer, name=layer.name, dtype=layer.dtype_policy)


def _export_form(layer, decision, shape):
    if decision.kind == "dense":
        new = export_layers.dense_fold(layer, shape)
        if new is not None:
            return new
    return export_layers.staged_export_layer(layer, decision.merge_stages, "grouped_conv")


def _model_macs(model):
    from keras_bft.utils import count_macs

    try:
        return int(count_macs(model))
    except ValueError:  # dynamic shapes or a layer count_macs does not know
        return None


def _plan(model, quantization, shapes, objective, cost_model, size_budget):
    shapes = tuple(tuple(int(d) for d in s) for s in shapes)
    try:
        rewrite = _Pass(model, quantization, shapes)
    except ValueError as error:
        note = (
            f"{error}. Its layers are exported as trained (each ButterflyFusion in its own `lowering`), "
            "without the exporter's rewrite: build it as a functional model (keras.Model(inputs, "
            "outputs)) to let the exporter choose each butterfly's form."
        )
        if quantization == "int8":
            note += (
                " In int8, give its ButterflyFusion layers lowering='grouped_conv': XNNPACK does not "
                "run the int8 BATCH_MATMUL of the default lowering."
            )
        return None, LoweringReport(quantization, None, shapes, notes=(note,))
    sites = rewrite.all_sites()
    decisions = search.decide(sites, quantization, objective, cost_model, size_budget)
    report = LoweringReport(
        quantization,
        objective,
        shapes,
        tuple(decisions),
        tuple(rewrite.all_notes()),
        model_macs=_model_macs(model) if shapes and shapes[0][0] == 1 else None,
        model_weights=model.count_params(),
    )
    return (rewrite, dict(zip(sites, decisions))), report


def plan_lowering(model, quantization, shapes, objective="latency", cost_model=None,
                  size_budget=search.BALANCED_SIZE_BUDGET):
    """The lowering decisions `prepare_for_export` would take, without building the export model.

    `keras_bft.quantization.quantize_model` takes its butterflies' forms from
    here, so a quantization-aware model runs the graph its export will have.

    Args:
        model: a Keras model.
        quantization: the export precision.
        shapes: the static input shapes of the export (batch first), one per input.
        objective: one of `search.OBJECTIVES`.
        cost_model: optional `cost_model.CostModel`.
        size_budget: the `"balanced"` objective's weight budget (see `search.decide`).

    Returns:
        A `LoweringReport`.
    """
    search.check_objective(objective)
    return _plan(model, quantization, shapes, objective, cost_model, size_budget)[1]


def prepare_for_export(model, quantization, shapes, cost_model=None, objective="latency",
                       size_budget=search.BALANCED_SIZE_BUDGET, calibration=None):
    """A new model computing `model` in the forms the exporter chose, and the report of what it did.

    `model` is not modified (no layer of it is called on new inputs). A model
    without a layer graph (subclassed) is returned as it is, with a warning
    and a note in the report.

    Args:
        model: a Keras model.
        quantization: the target precision (`"int8"` picks the int8 cost model
            and rewrites hard-swish).
        shapes: the static input shapes of the export (batch first).
        cost_model: optional `cost_model.CostModel`.
        objective: `"latency"`, `"size"` or `"balanced"` (see `search`).
        size_budget: the `"balanced"` objective's weight budget.
        calibration: for int8, calibration samples (each a list of batch-1
            arrays in input order); hard-swish calls whose inputs they keep
            near zero get the linear int8 form (see `HardSwishAsProduct`).

    Returns:
        `(export_model, report)`: the new model (or `model` itself when
        nothing changes) and a `LoweringReport` (iterating it gives the
        per-layer `Decision`s).
    """
    search.check_objective(objective)
    planned, report = _plan(model, quantization, shapes, objective, cost_model, size_budget)
    if planned is None:
        warnings.warn(report.notes[0], stacklevel=2)
        return model, report
    rewrite, decisions = planned
    if quantization == "int8" and calibration is not None:
        rewrite.linear_hard_swish = small_range_hard_swish(rewrite.graph, calibration)
    export_model = rewrite.rebuild(decisions)
    return (model if export_model is None else export_model), report
