"""Interleaved LiteRT latency benchmark of several .tflite models, built on LiteRT's own benchmark tool."""

import argparse
import json
import os
import statistics
import tempfile
import time

import keras
import numpy as np

from keras_bft.tflite import graph


def _litert_tool():
    # LiteRT's `benchmark_litert_model` holds the CompiledModel setup (environment,
    # CPU options, input filling); its timer runs one model at a time, so the
    # interleaving loop lives here.
    from ai_edge_litert.tools import benchmark_litert_model as tool

    return tool


def _open(model_path, threads):
    tool = _litert_tool()
    (compiled_model_cls, accelerator_cls, environment_cls, environment_options_cls,
     options_cls, cpu_options_cls) = tool._import_litert()
    args = argparse.Namespace(
        num_threads=threads,
        use_npu=False,
        use_gpu=False,
        no_cpu=False,
        require_full_delegation=False,
        runtime_path="",
        compiler_plugin_path="",
        dispatch_library_path="",
    )
    environment = tool.create_environment(args, environment_cls, environment_options_cls)
    options = tool.create_model_options(
        args, options_cls, cpu_options_cls, tool.build_hardware_accelerators(args, accelerator_cls)
    )
    # From a file (mmapped, page-aligned), as the tool does: XNNPACK can fail on
    # an in-memory buffer at an unlucky address.
    compiled = compiled_model_cls.from_file(model_path, environment=environment, options=options)
    signature = next(iter(compiled.get_signature_list()), "serving_default")
    input_details = compiled.get_input_tensor_details(signature)
    inputs = {n: compiled.create_input_buffer_by_name(signature, n) for n in input_details}
    outputs = {
        n: compiled.create_output_buffer_by_name(signature, n)
        for n in compiled.get_output_tensor_details(signature)
    }
    np.random.seed(0)
    for name, buffer in inputs.items():
        tool.fill_random_input(buffer, input_details[name])

    def run():
        start = time.perf_counter()
        compiled.run_by_name(signature, inputs, outputs)
        return (time.perf_counter() - start) * 1000.0

    return run, compiled.is_fully_accelerated(), (environment, compiled)


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
        models: paths of `.tflite` files or their bytes.
        threads: thread counts to measure.
        num_runs: timed inferences per model and thread count.
        warmup_runs: untimed inferences per model first.
        rounds: number of interleaved rounds.
        names: display names (default: file names, or `model_<i>`).
        verbose: 1 shows a `keras.utils.Progbar`, 0 is silent.

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
    if isinstance(models, (str, bytes, os.PathLike)):
        models = [models]
    models = list(models)
    if not models:
        raise ValueError(f"`models` must name at least one model. Received: models={models!r}")
    threads = tuple(int(t) for t in threads)
    if not threads or min(threads) < 1:
        raise ValueError(f"`threads` must be positive integers. Received: threads={threads!r}")
    for name, value, low in (("num_runs", num_runs, 1), ("warmup_runs", warmup_runs, 0), ("rounds", rounds, 1)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"`{name}` must be an integer >= {low}. Received: {name}={value!r}")
    rounds = min(rounds, num_runs)
    blobs = []
    for i, model in enumerate(models):
        if isinstance(model, (bytes, bytearray)):
            blobs.append(bytes(model))
        else:
            if not os.path.isfile(model):
                raise ValueError(f"No such .tflite file. Received: models[{i}]={os.fspath(model)!r}")
            blobs.append(graph.read_bytes(model))
    if names is None:
        names = [
            os.path.basename(os.fspath(m)) if not isinstance(m, (bytes, bytearray)) else f"model_{i}"
            for i, m in enumerate(models)
        ]
    if len(names) != len(blobs):
        raise ValueError(f"`names` must have one entry per model. Received: names={names!r}")
    histograms = [graph.op_histogram(b) for b in blobs]

    per_round = [num_runs // rounds + (1 if r < num_runs % rounds else 0) for r in range(rounds)]
    progress = keras.utils.Progbar(len(threads) * rounds * len(blobs), verbose=verbose, unit_name="batch")
    rows = []
    folder = tempfile.TemporaryDirectory()
    paths = []
    for j, blob in enumerate(blobs):
        paths.append(os.path.join(folder.name, f"{j}.tflite"))
        with open(paths[-1], "wb") as f:
            f.write(blob)
    for t in threads:
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
                progress.add(1, values=[("threads", t)])
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
    folder.cleanup()
    return rows


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
