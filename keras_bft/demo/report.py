"""The demo's report: one table (printed and Markdown), a JSON dump, and two PNG plots."""

import dataclasses
import json
import os
import platform
import time

import keras
import numpy as np

from keras_bft.demo import data as data_lib

TABLE_FILE = "results.md"
JSON_FILE = "results.json"
MACS_PLOT = "accuracy_vs_macs.png"
LATENCY_PLOT = "accuracy_vs_latency.png"

_COLUMNS = (
    "model", "params", "MACs", "float acc", "int8 PTQ acc", "int8 QAT acc", "int8 KiB",
    "LiteRT 1T ms", "LiteRT 2T ms", "size obj. KiB", "size obj. 1T, 2T ms", "MACs / twin",
    "latency / twin 1T, 2T", "acc - twin (float, int8)",
)


def _pct(x):
    return "-" if x is None else f"{100 * x:.2f}"


def _ms(latency, threads):
    return "-" if not latency or threads not in latency else f"{latency[threads]:.3f}"


def _kib(size):
    return "-" if size is None else f"{size / 1024:.0f}"


def _best_int8(r):
    return r.qat_acc if r.qat_acc is not None else r.ptq_acc


def table_rows(results):
    """The table as lists of strings, one per result, in `_COLUMNS` order."""
    by_name = {r.name: r for r in results}
    rows = []
    for r in results:
        twin = by_name.get(r.twin)
        if twin is not None:
            macs_ratio = f"{r.macs / twin.macs:.2f}x"
            lat = [
                f"{r.latency_ms[t] / twin.latency_ms[t]:.2f}x"
                if r.latency_ms and twin.latency_ms and t in r.latency_ms and t in twin.latency_ms
                else "-"
                for t in (1, 2)
            ]
            lat_ratio = ", ".join(lat)
            d_float = f"{100 * (r.float_acc - twin.float_acc):+.2f}" if None not in (r.float_acc, twin.float_acc) else "-"
            bi, ti = _best_int8(r), _best_int8(twin)
            d_int8 = f"{100 * (bi - ti):+.2f}" if None not in (bi, ti) else "-"
            vs = (f"{macs_ratio} of {r.twin}", lat_ratio, f"{d_float}, {d_int8}")
        else:
            vs = ("(twin)" if any(o.twin == r.name for o in results) else "-", "-", "-")
        size_latency = (
            "-" if not r.size_objective_latency_ms
            else f"{_ms(r.size_objective_latency_ms, 1)}, {_ms(r.size_objective_latency_ms, 2)}"
        )
        rows.append([
            r.name, f"{r.params:,}", f"{r.macs:,}", _pct(r.float_acc), _pct(r.ptq_acc), _pct(r.qat_acc),
            _kib(r.int8_size), _ms(r.latency_ms, 1), _ms(r.latency_ms, 2),
            _kib(r.size_objective_size), size_latency, *vs,
        ])
    return rows


def format_table(results, markdown=True):
    """The results table as Markdown (or aligned plain text)."""
    rows = [list(_COLUMNS)] + table_rows(results)
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("---" for _ in _COLUMNS) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(_COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows)


def _frontier(points):
    """Pareto frontier (cost ascending, accuracy increasing) of (cost, accuracy, name) triples."""
    best, out = -np.inf, []
    for cost, acc, name in sorted(points):
        if acc > best:
            out.append((cost, acc, name))
            best = acc
    return out


def frontier_gaps(results, cost, accuracy):
    """For each BFT point: its accuracy minus the pointwise frontier's at the same cost.

    Inside the pointwise cost range the frontier is interpolated linearly
    between its points. Beyond its costliest point the frontier is that point's
    accuracy: the best pointwise model within the same budget (it costs less).
    BFT points cheaper than every pointwise model get None (no extrapolation).

    Args:
        results: the demo's `Result`s.
        cost: function Result -> cost (MACs, latency) or None.
        accuracy: function Result -> accuracy or None.

    Returns:
        A list of (result name, cost, gap in points or None, name of the
        pointwise model compared with when beyond the frontier's range, else None).
    """
    pw = _frontier([(cost(r), accuracy(r), r.name) for r in results
                    if r.fusion == "pointwise" and cost(r) is not None and accuracy(r) is not None])
    gaps = []
    for r in results:
        if r.fusion != "butterfly" or cost(r) is None or accuracy(r) is None:
            continue
        c = cost(r)
        if pw and pw[0][0] <= c <= pw[-1][0]:
            xs, ys, _ = zip(*pw)
            gaps.append((r.name, c, 100 * (accuracy(r) - float(np.interp(c, xs, ys))), None))
        elif pw and c > pw[-1][0]:
            gaps.append((r.name, c, 100 * (accuracy(r) - pw[-1][1]), pw[-1][2]))
        else:
            gaps.append((r.name, c, None, None))
    return gaps


def _latency1(r):
    return r.latency_ms.get(1) if r.latency_ms else None


def _gap_lines(results):
    lines = []
    for title, cost, acc, unit in (
        ("float accuracy at equal MACs", lambda r: r.macs, lambda r: r.float_acc, "MACs"),
        ("int8 accuracy at equal int8 LiteRT latency (1 thread)", _latency1, _best_int8, "ms"),
    ):
        gaps = frontier_gaps(results, cost, acc)
        if not gaps:
            continue
        lines.append(f"BFT minus the pointwise frontier, {title}:")
        for name, c, gap, beyond in gaps:
            where = f"{c:,.0f} {unit}" if unit == "MACs" else f"{c:.3f} {unit}"
            if gap is None:
                verdict = "cheaper than every pointwise model: not compared"
            elif beyond:
                verdict = f"{gap:+.2f} points vs {beyond}, the best pointwise model, which costs less"
            else:
                verdict = f"{gap:+.2f} points"
            lines.append(f"- {name} ({where}): {verdict}")
    return lines


def plot(results, path_macs, path_latency):
    """Writes the two PNG plots: accuracy vs MACs and int8 accuracy vs int8 LiteRT latency."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    styles = {"butterfly": ("tab:red", "BFT"), "pointwise": ("tab:blue", "pointwise")}

    def series(fusion, x, y):
        pts = sorted((x(r), y(r)) for r in results
                     if r.fusion == fusion and x(r) is not None and y(r) is not None)
        return [p[0] for p in pts], [100 * p[1] for p in pts]

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for fusion, (color, label) in styles.items():
        xs, ys = series(fusion, lambda r: r.macs / 1e6, lambda r: r.float_acc)
        ax.plot(xs, ys, "o-", color=color, label=f"{label} float")
        xs, ys = series(fusion, lambda r: r.macs / 1e6, _best_int8)
        if xs:
            ax.plot(xs, ys, "s--", color=color, alpha=0.6, label=f"{label} int8")
    ax.set_xlabel("MACs per image (millions)")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Accuracy vs MACs")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path_macs)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    any_points = False
    for fusion, (color, label) in styles.items():
        for threads, marker in ((1, "o-"), (2, "^:")):
            xs, ys = series(fusion, lambda r, t=threads: (r.latency_ms or {}).get(t), _best_int8)
            if xs:
                any_points = True
                ax.plot(xs, ys, marker, color=color, label=f"{label}, {threads} thread{'s' * (threads > 1)}")
    if not any_points:
        ax.text(0.5, 0.5, "no LiteRT latency measured\n(see the notes in results.md)",
                ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("int8 LiteRT latency, median (ms)")
    ax.set_ylabel("int8 test accuracy (%)")
    ax.set_title("int8 accuracy vs LiteRT latency")
    ax.grid(alpha=0.3)
    if any_points:
        ax.legend()
    fig.tight_layout()
    fig.savefig(path_latency)
    plt.close(fig)


def machine_description():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} logical CPUs, Python {platform.python_version()}"


def _versions():
    versions = {"keras": keras.__version__, "backend": keras.backend.backend()}
    for module in ("tensorflow", "ai_edge_litert"):
        try:
            versions[module] = __import__(module).__version__
        except (ImportError, AttributeError):
            pass
    return versions


def write_report(demo, folder):
    """Writes results.md, results.json and the plots of a finished `Demo` into `folder`; prints the table."""
    results, s = demo.results, demo.settings
    plot(results, os.path.join(folder, MACS_PLOT), os.path.join(folder, LATENCY_PLOT))

    header = [
        f"# keras-bft demo ({s.mode})",
        "",
        f"- date: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        f"- machine: {machine_description()}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in _versions().items())}",
        f"- {data_lib.describe_source(demo.dataset)}",
        f"- trained on {len(demo.x_train)} images, tested on {len(demo.x_test)}; {s.epochs} epoch(s), "
        f"batch {s.batch_size}, Adam lr {s.learning_rate} cosine-decayed to 0; QAT {s.qat_epochs} epoch(s) from lr/20 cosine-decayed to 0; "
        f"PTQ calibrated on {s.calibration_images} training images",
        f"- accuracies in %, on the test images; int8 acc measured in LiteRT; latency: int8 model, "
        f"median of {s.benchmark_runs} runs, batch 1. Twin: cheapest pointwise model with at least the "
        f"BFT model's MACs. 'acc - twin' int8 uses QAT where measured, else PTQ.",
        "- int8 files: exported with objective='latency' (scored, and the QAT file takes the same forms); "
        "'size obj.': the same model exported with objective='size' (BFT models), timed in the same "
        "interleaved run. See 'Lowering' for what the exporter did to each BFT model's butterflies.",
    ]
    notes = list(demo.notes) + [f"{r.name}: {n}" for r in results for n in r.notes]
    parity = []
    for r in results:
        for kind, p in (("PTQ", r.ptq_parity), ("QAT", r.qat_parity)):
            if p:
                parity.append(f"- {r.name} {kind}: " + ", ".join(
                    f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in p.items()))
    gaps = _gap_lines(results)
    lowering = []
    for r in results:
        for objective, text in (r.lowering or {}).items():
            lowering += [f"{r.name}, objective={objective!r}:", "", "```", text, "```", ""]
    text = "\n".join(
        header
        + ["", format_table(results, markdown=True), ""]
        + (["## Frontiers", ""] + gaps + [""] if gaps else [])
        + (["## Lowering (what the exporter did to the butterflies)", ""] + lowering if lowering else [])
        + (["## LiteRT parity (int8 vs Keras)", ""] + parity + [""] if parity else [])
        + (["## Notes", ""] + [f"- {n}" for n in notes] + [""] if notes else [])
        + [f"![accuracy vs MACs]({MACS_PLOT})", "", f"![int8 accuracy vs LiteRT latency]({LATENCY_PLOT})", ""]
    )
    with open(os.path.join(folder, TABLE_FILE), "w") as f:
        f.write(text)
    with open(os.path.join(folder, JSON_FILE), "w") as f:
        json.dump(
            {"settings": dataclasses.asdict(s), "source": demo.dataset.source,
             "location": demo.dataset.location, "notes": notes,
             "results": [dataclasses.asdict(r) for r in results]},
            f, indent=1, default=str,
        )
    demo.log("")
    demo.log(format_table(results, markdown=False))
    for line in gaps:
        demo.log(line)
    for n in notes:
        demo.log("note: " + n)
