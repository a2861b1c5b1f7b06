"""A latency model of LiteRT's XNNPACK CPU kernels for the forms of a ButterflyFusion.

Its coefficients are measured, not guessed: `benchmarks/calibrate_cost_model.py`
times single ops in LiteRT and writes them to `cost_models.json` next to this
module (`--write`); docs/benchmarks-tflite.md has the measurements and how well
whole layers are predicted.
"""

import dataclasses
import functools
import json
import math
import os

import numpy as np

COST_MODELS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cost_models.json")

# What a conv costs in a .tflite file, per precision: (bytes per weight, bytes per output channel).
# Per output channel the converter stores a bias (int32 / float32, zeros where the layer had none)
# and, when quantized per channel, a float32 scale and an int64 zero point for the filter and for
# the int8 bias: 4 + 2 * 12 = 28 bytes in int8, next to one int8 weight per input of the group.
# tests/test_export_lowering.py holds these to converted files.
STORAGE_BYTES = {
    "float32": (4, 4),
    "float16": (2, 4),
    "dynamic": (1, 16),
    "int8": (1, 28),
}
# Each op adds its output tensor (with its long scoped name and quantization parameters) and the op
# itself: ~500 bytes, fitted on the demo's MobileNetV2 in int8 and float32 (docs/benchmarks-tflite.md);
# it varies with the names. A staged form has 4 ops per stage (CONV_2D, RESHAPE, TRANSPOSE, RESHAPE).
OP_BYTES = 500


def conv_bytes(quantization, weights, output_channels):
    """Bytes a conv with `weights` weights and `output_channels` outputs adds to a file of `quantization`."""
    per_weight, per_channel = STORAGE_BYTES[quantization]
    return per_weight * weights + per_channel * output_channels


@dataclasses.dataclass(frozen=True)
class CostModel:
    """Latency model of one ButterflyFusion form in LiteRT (XNNPACK, 1 thread), in microseconds.

    Attributes:
        group_ns_per_mac: `((size, ns), ...)`: nanoseconds per
            multiply-accumulate of a grouped 1x1 conv whose groups map `size`
            channels to `size` (a dense conv is one group); interpolated in
            log(size), clamped at the ends. Rectangular groups use
            min(group_in, group_out), checked by benchmarks/layer_choices.py.
        shuffle_ns_per_value: reshape + transpose + reshape, per value.
        add_ns_per_value: the residual add, per value.
        op_us: fixed cost of one delegated op.
        fitted: where the numbers come from (script, date, runtime, machine).
    """

    group_ns_per_mac: tuple
    shuffle_ns_per_value: float
    add_ns_per_value: float
    op_us: float
    fitted: str = ""

    def ns_per_mac(self, group_in):
        points = sorted(tuple(p) for p in self.group_ns_per_mac)
        xs = [math.log(g) for g, _ in points]
        return float(np.interp(math.log(group_in), xs, [ns for _, ns in points]))

    def dense_us(self, positions, in_channels, out_channels):
        """One 1x1 conv from `in_channels` to `out_channels` over `positions` pixels."""
        return (positions * in_channels * out_channels * self.ns_per_mac(in_channels)) / 1e3 + self.op_us

    def epilogue_us(self, positions, channels):
        """One elementwise pass (a batch norm's scale after stages, which no conv absorbs)."""
        return positions * channels * self.add_ns_per_value / 1e3 + self.op_us

    def stages_us(self, positions, plan, residual):
        """The stages of `plan` as grouped 1x1 convs + shuffles, with the residual add and padding."""
        total = 0.0
        for stage in plan.stages:
            # A group with few inputs OR few outputs vectorizes badly: key on the smaller side.
            total += positions * stage.macs * self.ns_per_mac(min(stage.group_in, stage.group_out)) / 1e3
            total += positions * stage.out_channels * self.shuffle_ns_per_value / 1e3
            total += 2 * self.op_us
        if residual:
            total += positions * plan.out_channels * self.add_ns_per_value / 1e3 + self.op_us
        if plan.padding != (0, 0):
            total += 2 * self.op_us + positions * plan.padded_in * self.shuffle_ns_per_value / 1e3
        return total

    def to_json(self):
        """The fields as a JSON-ready dict (the format of `cost_models.json`)."""
        fields = dataclasses.asdict(self)
        fields["group_ns_per_mac"] = [list(p) for p in self.group_ns_per_mac]
        return fields


def _from_json(fields):
    fields = dict(fields)
    fields["group_ns_per_mac"] = tuple(tuple(p) for p in fields["group_ns_per_mac"])
    return CostModel(**fields)


@functools.lru_cache(maxsize=None)
def _load(path):
    with open(path) as f:
        return {name: _from_json(fields) for name, fields in json.load(f).items()}


def default_cost_model(quantization):
    """The measured model for `quantization`: int8 kernels for `"int8"`, float kernels otherwise."""
    models = _load(COST_MODELS_FILE)
    return models["int8"] if quantization == "int8" else models["float32"]


def save_cost_model(name, cost_model, path=COST_MODELS_FILE):
    """Writes `cost_model` as entry `name` (`"int8"` or `"float32"`) of the JSON file at `path`."""
    with open(path) as f:
        models = json.load(f)
    models[name] = cost_model.to_json()
    with open(path, "w") as f:
        json.dump(models, f, indent=2)
        f.write("\n")
    _load.cache_clear()
