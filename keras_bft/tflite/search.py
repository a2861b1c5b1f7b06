"""The lowering search: which exact form each ButterflyFusion is exported in, for an objective.

Forms of one layer, all the same function (tests/test_tflite_lowering.py holds
them to the dense oracle):

- `"dense"`: the dense fold, one 1x1 conv with the layer's `dense_kernel()`
  (residual included; TFLite folds a following BatchNormalization into it);
- `"stages"`: any split of the stages into consecutive runs, each run composed
  into one block-diagonal stage (`ButterflyPlan.merge`), each stage a grouped
  1x1 conv + shuffle (the `"grouped_conv"` lowering).

Objectives:

- `"latency"`: the form the cost model (`cost_model.CostModel`) predicts fastest;
- `"size"`: the fastest form that adds no bytes to the file next to the
  trained stages. Bytes count the weights, what the converter stores per
  conv output channel (`cost_model.STORAGE_BYTES`: in int8, 28 bytes of bias
  and per-channel scales, more than a radix-8 stage's 8 weights) and per op
  (`cost_model.OP_BYTES`), so a fold of a small layer (one conv) can be
  smaller than its stages (several);
- `"balanced"`: starting from the size choice, the forms that buy the most
  predicted time per added byte, while the butterflies' bytes stay within
  `size_budget` times their bytes in the size choice.
"""

import dataclasses
import itertools

from keras_bft.tflite import cost_model as cost_model_lib

OBJECTIVES = ("latency", "size", "balanced")
BALANCED_SIZE_BUDGET = 1.25


def check_objective(objective):
    """Returns `objective` if it is one of `OBJECTIVES`, else raises a ValueError naming it."""
    if objective not in OBJECTIVES:
        raise ValueError(f"`objective` must be one of {OBJECTIVES}. Received: objective={objective!r}")
    return objective


def compositions(count):
    """Every split of `count` stages into consecutive runs, e.g. 3 -> (1,1,1), (1,2), (2,1), (3,)."""
    for cuts in itertools.product((False, True), repeat=count - 1):
        segments, run = [], 1
        for cut in cuts:
            if cut:
                segments.append(run)
                run = 1
            else:
                run += 1
        segments.append(run)
        yield tuple(segments)


@dataclasses.dataclass(frozen=True)
class Form:
    """One exact form of a butterfly: its weights, file bytes, MACs per position and predicted time."""

    kind: str  # "dense" or "stages"
    merge_stages: tuple
    radices: tuple
    weights: int
    macs: int
    predicted_us: float
    bytes: int = 0


def forms(plan, positions, residual, cost_model, can_fold=True, followed_by_bn=False, quantization="int8"):
    """Every form of a butterfly of `plan` over `positions` pixels, staged forms first.

    Args:
        plan: the layer's `ButterflyPlan` (as trained, unmerged).
        positions: pixels of its input (batch included).
        residual: whether the layer adds its input.
        cost_model: a `CostModel`.
        can_fold: whether a dense fold is expressible (channels-last input).
        followed_by_bn: a BatchNormalization consumes the output. TFLite folds
            it into a dense fold's conv for free; after stages its scale stays
            one elementwise pass, charged to the staged forms.
        quantization: the export precision (bytes per weight and per channel).

    Returns:
        A list of `Form`s, the stages as trained first.
    """
    epilogue = cost_model.epilogue_us(positions, plan.out_channels) if followed_by_bn else 0.0
    result = []
    for segments in compositions(plan.num_stages):
        merged = plan.merge(segments)
        cost = cost_model.stages_us(positions, merged, residual) + epilogue
        size = sum(cost_model_lib.conv_bytes(quantization, s.macs, s.out_channels) for s in merged.stages)
        size += 4 * cost_model_lib.OP_BYTES * merged.num_stages
        result.append(Form("stages", segments, merged.radices, merged.macs, merged.macs, cost, size))
    result.sort(key=lambda f: -len(f.merge_stages))
    if can_fold:
        weights = plan.in_channels * plan.out_channels
        cost = cost_model.dense_us(positions, plan.in_channels, plan.out_channels)
        core = (min(plan.in_channels, plan.out_channels),)
        size = cost_model_lib.conv_bytes(quantization, weights, plan.out_channels) + cost_model_lib.OP_BYTES
        result.append(Form("dense", (plan.num_stages,), core, weights, weights, cost, size))
    return result


def _fastest(candidates):
    # Ties go to fewer bytes, then to the earlier form (the stages as trained come first).
    return min(candidates, key=lambda f: (f.predicted_us, f.bytes))


def choose(candidates, objective):
    """The form `objective` picks among `candidates` of one layer ("balanced": its size choice)."""
    if objective == "latency":
        return _fastest(candidates)
    as_trained = candidates[0]
    return _fastest([f for f in candidates if f.bytes <= as_trained.bytes])


@dataclasses.dataclass(frozen=True)
class Decision:
    """How one ButterflyFusion is exported, and what that costs next to the layer as trained.

    Attributes:
        layer: the layer's name (`outer/inner` inside a nested model).
        kind: `"dense"` (folded) or `"stages"`.
        lowering: `"dense"` or `"grouped_conv"`.
        merge_stages: how the trained stages are merged (one count per exported stage).
        radices: radices of the exported stages (for a fold: min(in, out)).
        predicted_us: predicted time of the exported form.
        original_us: predicted time of the stages as trained (unmerged).
        positions: pixels of the layer's input at the export shape (batch included).
        weights: weights of the exported form (bias not counted).
        keras_weights: weights of the trained stages.
        bytes: predicted bytes of the exported form in the file.
        keras_bytes: predicted bytes of the trained stages in the file.
        macs: MACs of the exported form at the export shape.
        keras_macs: MACs of the trained stages at the export shape.
        chosen_by: the objective that chose it, or `"quantize_model"` for a
            quantization-aware layer whose form was fixed when it was quantized.
    """

    layer: str
    kind: str
    lowering: str
    merge_stages: tuple
    radices: tuple
    predicted_us: float
    original_us: float
    positions: int = 0
    weights: int = 0
    keras_weights: int = 0
    macs: int = 0
    keras_macs: int = 0
    chosen_by: str = "latency"
    bytes: int = 0
    keras_bytes: int = 0

    @property
    def form(self):
        """`"dense"`, `"merged"` (fewer stages than trained) or `"stages"` (as trained)."""
        if self.kind == "dense":
            return "dense"
        return "merged" if len(self.merge_stages) < sum(self.merge_stages) else "stages"

    def same_form(self, other):
        """Whether `other` exports the same layer in the same form (times aside)."""
        return (self.layer, self.kind, tuple(self.merge_stages), tuple(self.radices)) == (
            other.layer, other.kind, tuple(other.merge_stages), tuple(other.radices)
        )


def make_decision(name, plan, form, as_trained, positions, chosen_by):
    """The `Decision` exporting the layer `name` of `plan` in `form` (`as_trained`: its unmerged stages)."""
    return Decision(
        layer=name,
        kind=form.kind,
        lowering="dense" if form.kind == "dense" else "grouped_conv",
        merge_stages=tuple(form.merge_stages),
        radices=tuple(form.radices),
        predicted_us=form.predicted_us,
        original_us=as_trained.predicted_us,
        positions=int(positions),
        weights=int(form.weights),
        keras_weights=int(plan.macs),
        macs=int(positions * form.macs),
        keras_macs=int(positions * plan.macs),
        chosen_by=chosen_by,
        bytes=int(form.bytes),
        keras_bytes=int(as_trained.bytes),
    )


def choose_lowering(
    layer,
    positions,
    quantization="int8",
    cost_model=None,
    allow_dense=True,
    followed_by_bn=False,
    objective="latency",
):
    """Picks the exact form of one built `ButterflyFusion` for `positions` pixels.

    Args:
        layer: a built ButterflyFusion.
        positions: pixels per example (batch included) of its input.
        quantization: the export precision (picks the default cost model).
        cost_model: optional `CostModel`.
        allow_dense: whether a dense fold is a candidate.
        followed_by_bn: a BatchNormalization consumes the output (see `forms`).
        objective: `"latency"` or `"size"` (`"balanced"` needs the whole
            model; for one layer it is `"size"`).

    Returns:
        A `Decision`.
    """
    check_objective(objective)
    cost_model = cost_model or cost_model_lib.default_cost_model(quantization)
    plan = layer.plan
    candidates = forms(plan, positions, layer.residual, cost_model, allow_dense, followed_by_bn, quantization)
    form = choose(candidates, objective)
    return make_decision(layer.name, plan, form, candidates[0], positions, objective)


@dataclasses.dataclass(frozen=True, eq=False)
class Site:
    """A ButterflyFusion of a model, where the exporter meets it.

    Attributes:
        name: the layer's name (`outer/inner` inside a nested model).
        layer: the ButterflyFusion.
        positions: pixels of its input at the export shape (batch included).
        can_fold: whether a dense fold is expressible for its input.
        followed_by_bn: whether only BatchNormalization layers consume its output.
        fixed: `(kind, merge_stages)` already chosen (a quantization-aware layer), else None.
    """

    name: str
    layer: object
    positions: int
    can_fold: bool = True
    followed_by_bn: bool = False
    fixed: object = None


def decide(sites, quantization, objective="latency", cost_model=None, size_budget=BALANCED_SIZE_BUDGET):
    """One `Decision` per site, for `objective`.

    Args:
        sites: the model's `Site`s.
        quantization: the export precision.
        objective: one of `OBJECTIVES`.
        cost_model: optional `CostModel`.
        size_budget: `"balanced"` keeps the butterflies' bytes within this
            factor of their bytes in the `"size"` forms.

    Returns:
        A list of `Decision`s in the order of `sites`.
    """
    check_objective(objective)
    cost_model = cost_model or cost_model_lib.default_cost_model(quantization)
    options, chosen = [], []
    for site in sites:
        plan = site.layer.plan
        candidates = forms(plan, site.positions, site.layer.residual, cost_model, site.can_fold,
                           site.followed_by_bn, quantization)
        if site.fixed is not None:
            form = next(f for f in candidates if (f.kind, f.merge_stages) == site.fixed)
        else:
            form = choose(candidates, objective)
        options.append(candidates)
        chosen.append(form)
    if objective == "balanced":
        _spend_budget(sites, options, chosen, size_budget)
    decisions = []
    for site, form, candidates in zip(sites, chosen, options):
        by = "quantize_model" if site.fixed is not None else objective
        decisions.append(make_decision(site.name, site.layer.plan, form, candidates[0], site.positions, by))
    return decisions


def _spend_budget(sites, options, chosen, size_budget):
    """Greedy: upgrade the form that saves the most time per added byte while the budget lasts."""
    spent = sum(form.bytes for form in chosen)
    budget = size_budget * spent
    while True:
        best = None
        for i, (site, candidates) in enumerate(zip(sites, options)):
            if site.fixed is not None:
                continue
            current = chosen[i]
            for form in candidates:
                saved = current.predicted_us - form.predicted_us
                added = form.bytes - current.bytes
                if saved <= 0 or spent + added > budget:
                    continue
                ratio = saved / max(added, 1)
                if best is None or ratio > best[0]:
                    best = (ratio, i, form, added)
        if best is None:
            return
        _, i, form, added = best
        chosen[i] = form
        spent += added
