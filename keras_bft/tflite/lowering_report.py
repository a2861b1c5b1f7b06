"""What the exporter did to a model's butterflies, summed up per form: `LoweringReport`."""

import dataclasses

FORMS = ("dense", "merged", "stages")
FORM_TITLES = {
    "dense": "folded to a dense 1x1 conv",
    "merged": "stages merged",
    "stages": "stages as trained",
}


def _m(value):
    """A count in millions (or thousands) for a one-line summary."""
    if value >= 1e6:
        return f"{value / 1e6:.2f}M"
    if value >= 1e3:
        return f"{value / 1e3:.1f}K"
    return str(int(value))


@dataclasses.dataclass(frozen=True)
class LoweringReport:
    """The lowering decisions of one export and their totals.

    `str(report)` is the summary `keras-bft convert` prints: per form, how
    many butterflies, their MACs and weights in the exported model vs the
    Keras model, and the predicted time (and the measured one, once set with
    `with_measurement`). Iterating, indexing and `len` go over `decisions`.

    Attributes:
        quantization: the export precision.
        objective: the objective of the search (`"latency"`, `"size"`,
            `"balanced"`), or None when the exporter did not rewrite.
        input_shapes: the static input shapes of the export (batch first).
        decisions: one `search.Decision` per ButterflyFusion call.
        notes: what was left as trained, and why.
        model_macs: MACs of the Keras model at the export shape, if countable.
        model_weights: weights of the Keras model.
        measured_ms: measured median latency of the exported file, if measured.
    """

    quantization: str
    objective: object
    input_shapes: tuple = ()
    decisions: tuple = ()
    notes: tuple = ()
    model_macs: object = None
    model_weights: object = None
    measured_ms: object = None

    def __iter__(self):
        return iter(self.decisions)

    def __len__(self):
        return len(self.decisions)

    def __getitem__(self, index):
        return self.decisions[index]

    def with_measurement(self, measured_ms):
        """A copy that also reports a measured median latency (ms) of the exported file."""
        return dataclasses.replace(self, measured_ms=float(measured_ms))

    def summary(self):
        """`{form: {"layers", "macs", "keras_macs", "weights", "keras_weights", "bytes", "keras_bytes",
        "predicted_us", "original_us"}}`; `keras_*` and `original_us`: the same layers as trained."""
        rows = {}
        for form in FORMS:
            chosen = [d for d in self.decisions if d.form == form]
            rows[form] = {
                "layers": len(chosen),
                "macs": sum(d.macs for d in chosen),
                "keras_macs": sum(d.keras_macs for d in chosen),
                "weights": sum(d.weights for d in chosen),
                "keras_weights": sum(d.keras_weights for d in chosen),
                "bytes": sum(d.bytes for d in chosen),
                "keras_bytes": sum(d.keras_bytes for d in chosen),
                "predicted_us": sum(d.predicted_us for d in chosen),
                "original_us": sum(d.original_us for d in chosen),
            }
        return rows

    @property
    def export_macs(self):
        """MACs of the exported model: the Keras model's with each butterfly's replaced by its form's."""
        if self.model_macs is None:
            return None
        return self.model_macs + sum(d.macs - d.keras_macs for d in self.decisions)

    @property
    def export_weights(self):
        """Weights of the exported model (before quantization), counted like `model_weights`."""
        if self.model_weights is None:
            return None
        return self.model_weights + sum(d.weights - d.keras_weights for d in self.decisions)

    def verdict(self):
        """One sentence: what happened to the butterflies and what it buys or costs."""
        total = len(self.decisions)
        if not total:
            return "No ButterflyFusion layer was rewritten."
        rows = self.summary()
        predicted = sum(d.predicted_us for d in self.decisions) / 1e3
        original = sum(d.original_us for d in self.decisions) / 1e3
        size = sum(d.bytes for d in self.decisions) / 1024
        staged_size = sum(d.keras_bytes for d in self.decisions) / 1024
        dense = rows["dense"]["layers"]
        times = f"predicted {predicted:.2f} ms vs {original:.2f} ms as trained"
        sizes = f"{size:,.0f} KiB of butterfly weights and metadata vs {staged_size:,.0f} KiB as trained"
        if dense == total:
            text = (
                f"{dense}/{total} butterflies folded to dense: at this input size the butterfly brings "
                f"no speed-up ({times}); {sizes}."
            )
        else:
            text = (
                f"{total - dense}/{total} butterflies kept as stages ({rows['merged']['layers']} of them "
                f"merged), {dense} folded to dense: {times}; {sizes}."
            )
        if self.objective == "latency" and size > 1.05 * staged_size:
            text += " objective='size' keeps the file small."
        elif self.objective == "size" and predicted < 0.95 * original:
            text += " Folds and merges that add no bytes were taken for speed."
        return text

    def __str__(self):
        shapes = ", ".join("x".join(str(d) for d in s) for s in self.input_shapes) or "?"
        objective = "as trained (no rewrite)" if self.objective is None else f"objective={self.objective!r}"
        lines = [
            f"Lowering for {self.quantization} at input {shapes}, {objective}: "
            f"{len(self.decisions)} ButterflyFusion layer(s)"
        ]
        if self.decisions:
            header = ("form", "layers", "MACs", "weights", "file KiB", "predicted us")
            table = [header, ("", "", "export / as trained", "", "", "")]
            for form, row in self.summary().items():
                if not row["layers"]:
                    continue
                table.append((
                    FORM_TITLES[form],
                    str(row["layers"]),
                    f"{_m(row['macs'])} / {_m(row['keras_macs'])}",
                    f"{_m(row['weights'])} / {_m(row['keras_weights'])}",
                    f"{row['bytes'] / 1024:,.0f} / {row['keras_bytes'] / 1024:,.0f}",
                    f"{row['predicted_us']:,.0f} / {row['original_us']:,.0f}",
                ))
            widths = [max(len(r[i]) for r in table) for i in range(len(header))]
            for r in table:
                lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if self.model_weights is not None and self.decisions:
            model = f"  model: {_m(self.export_weights)} weights exported vs {_m(self.model_weights)} in Keras"
            if self.model_macs is not None:
                model += f"; {_m(self.export_macs)} MACs vs {_m(self.model_macs)}"
            lines.append(model)
        if self.measured_ms is not None:
            lines.append(f"  measured: the whole model {self.measured_ms:.3f} ms (median, LiteRT, 1 thread)")
        lines.append("  " + self.verdict())
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)
