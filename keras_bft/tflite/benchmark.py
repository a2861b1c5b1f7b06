"""Interleaved LiteRT latency benchmark of several .tflite models, on LiteRT's public CompiledModel API."""

import contextlib
import json
import os
import statistics
import time

import numpy as np

from keras_bft.tflite import graph
from keras_bft.tflite import runtime


def _open(model_path, threads):
    """A function running one timed inference of the model, and LiteRT's delegation verdict."""
    compiled = runtime.compiled_model(model_path, threads)
    signature = next(iter(compiled.get_signature_list()), "serving_default")
    input_details = compiled.get_input_tensor_details(signature)
    with runtime.quiet_native_log(f"LiteRT could not run {model_path!r}"):
        inputs = {n: compiled.create_input_buffer_by_name(signature, n) for n in input_details}
        outputs = {
            n: compiled.create_output_buffer_by_name(signature, n)
            for n in compiled.get_output_tensor_details(signature)
        }
        compiled.run_by_name(signature, inputs, outputs)  # the first run logs its setup
    rng = np.random.default_rng(0)
    for name, buffer in inputs.items():  # random inputs, as LiteRT's benchmark tool uses
        dtype = np.dtype(input_details[name].get("dtype", "float32"))
        shape = input_details[name].get("shape", [1])
        if np.issubdtype(dtype, np.integer):
            buffer.write(rng.integers(-128, 128, shape).astype(dtype))
        else:
            buffer.write(rng.uniform(-1.0, 1.0, shape).astype(dtype))

    def run():
        start = time.perf_counter()
        compiled.run_by_name(signature, inputs, outputs)
        return (time.perf_counter() - start) * 1000.0

    return run, compiled.is_fully_accelerated(), compiled


def _percentile(values, q):
    return float(np.percentile(np.asarray(values), q))


def benchmark(
    models,
    threads=(1, 2),
    num_runs=50,
    warmup_runs=5,
    rounds=10,
    names=None,
    verbose=1,
):
    """Measures LiteRT CPU (XNNPACK) latency of `.tflite` models, interleaved.

    For each thread count, every model is compiled once, then `rounds` rounds
    run `num_runs / rounds` inferences of each model in turn (the order
    rotating each round), so load changes on the machine hit all models alike.

    Args:
        models: paths of `.tflite` files, their bytes or `ConversionResult`s.
        threads: a thread count or a sequence of them.
        num_runs: timed inferences per model and thread count.
        warmup_runs: untimed inferences per model first.
        rounds: number of interleaved rounds.
        names: display names (default: file names, or `model_<i>`).
        verbose: 1 shows a `keras.utils.Progbar`, 2 one line per thread
            count (for logs and pipes: no ANSI codes), 0 is silent.

    Returns:
        A list of dicts, one per model and thread count: `name`, `threads`,
        `median_ms`, `p90_ms`, `mean_ms`, `runs`, `ratio` (median over the
        first model's median at the same thread count), `size_bytes`,
        `fully_accelerated` and `op_histogram`.

    Example:

    ```python
    rows = benchmark(["bft.tflite", "pointwise.tflite"], threads=(1, 2))
    print(to_markdown(rows))
    ```
    """
    from keras_bft.tflite.convert import ConversionResult

    if isinstance(models, (str, bytes, os.PathLike, ConversionResult)):
        models = [models]
    models = list(models)
    if not models:
        raise ValueError(f"`models` must name at least one model. Received: models={models!r}")
    threads = _thread_counts(threads)
    for name, value, low in (("num_runs", num_runs, 1), ("warmup_runs", warmup_runs, 0), ("rounds", rounds, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}. Received: {name}={value!r}")
    if verbose not in (0, 1, 2):
        raise ValueError(f"`verbose` must be 0, 1 or 2. Received: verbose={verbose!r}")
    rounds = min(rounds, num_runs)
    blobs = [graph.read_bytes(model, f"models[{i}]") for i, model in enumerate(models)]
    if names is None:
        names = [_default_name(m, i) for i, m in enumerate(models)]
    if len(names) != len(blobs):
        raise ValueError(f"`names` must have one entry per model. Received: names={names!r}")
    histograms = [graph.op_histogram(b) for b in blobs]

    import keras

    per_round = [num_runs // rounds + (1 if r < num_runs % rounds else 0) for r in range(rounds)]
    rows = []
    with contextlib.ExitStack() as files:
        paths = [files.enter_context(runtime.model_file(b)) for b in blobs]
        for t in threads:
            if verbose:
                print(f"{len(blobs)} model(s), {t} thread(s):", flush=True)
            progress = keras.utils.Progbar(rounds * len(blobs), verbose=verbose, unit_name="round")
            rows.extend(_measure(paths, names, blobs, histograms, t, warmup_runs, rounds, per_round, progress))
    return rows


def _measure(paths, names, blobs, histograms, t, warmup_runs, rounds, per_round, progress):
    """Rows of one thread count: every model compiled, warmed up, then timed in rotating order."""
    rows = []
    opened = [_open(p, t) for p in paths]
    for run, _, _ in opened:
        for _ in range(warmup_runs):
            run()
    times = [[] for _ in blobs]
    for r in range(rounds):
        order = [(r + j) % len(blobs) for j in range(len(blobs))]
        for j in order:
            run = opened[j][0]
            times[j].extend(run() for _ in range(per_round[r]))
            progress.add(1)
    medians = [statistics.median(ts) for ts in times]
    for j, ts in enumerate(times):
        rows.append(
            {
                "name": names[j],
                "threads": t,
                "median_ms": medians[j],
                "p90_ms": _percentile(ts, 90),
                "mean_ms": statistics.mean(ts),
                "runs": len(ts),
                "ratio": medians[j] / medians[0],
                "size_bytes": len(blobs[j]),
                "fully_accelerated": bool(opened[j][1]),
                "op_histogram": histograms[j],
            }
        )
    del opened
    return rows


def _thread_counts(threads):
    """`threads` as a tuple of positive ints: an int, or a sequence of ints (never a string)."""
    if isinstance(threads, (int, np.integer)) and not isinstance(threads, bool):
        threads = (threads,)
    ok = isinstance(threads, (list, tuple)) and len(threads) > 0 and all(
        isinstance(t, (int, np.integer)) and not isinstance(t, bool) and t >= 1 for t in threads
    )
    if not ok:
        raise ValueError(
            "`threads` must be a positive integer or a sequence of them, e.g. (1, 2). "
            f"Received: threads={threads!r}"
        )
    return tuple(int(t) for t in threads)


def _default_name(model, index):
    from keras_bft.tflite.convert import ConversionResult

    if isinstance(model, ConversionResult):
        model = model.path
    if isinstance(model, (str, os.PathLike)):
        return os.path.basename(os.fspath(model))
    return f"model_{index}"


def _histogram_text(histogram, limit=6):
    items = list(histogram.items())
    text = ", ".join(f"{k} {v}" for k, v in items[:limit])
    return text + (", ..." if len(items) > limit else "")


def to_markdown(rows):
    """A Markdown table of `benchmark` rows."""
    lines = [
        "| model | threads | median ms | p90 ms | ratio | size KiB | fully delegated | ops |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['name']} | {row['threads']} | {row['median_ms']:.3f} | {row['p90_ms']:.3f} | "
            f"{row['ratio']:.3f} | {row['size_bytes'] / 1024:.1f} | "
            f"{'yes' if row['fully_accelerated'] else 'NO'} | {_histogram_text(row['op_histogram'])} |"
        )
    return "\n".join(lines) + "\n"


def to_json(rows):
    """The `benchmark` rows as a JSON string."""
    return json.dumps(rows, indent=2)
