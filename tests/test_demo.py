"""`keras-bft demo` end to end (tiny settings), its output folder rules, and the report helpers."""

import json
import os

import keras
import numpy as np
import pytest

from keras_bft import cli
from keras_bft.demo import pipeline
from keras_bft.demo import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "demo"
    (out / "models").mkdir(parents=True)
    (out / "stale.txt").write_text("from an earlier run")
    (out / "models" / "old.tflite").write_bytes(b"an earlier model")
    pipeline.write_manifest(str(out))  # as an earlier demo leaves it
    (out / "notes.txt").write_text("the user's, added later")
    code = cli.main(["demo", "--tiny", "--qat-epochs", "1", "--output-dir", str(out), "--force"])
    return code, out


def test_demo_end_to_end(demo_run, capsys):
    code, out = demo_run
    assert code == 0
    # --force replaced what the earlier demo wrote, and only that.
    assert not (out / "stale.txt").exists() and not (out / "models" / "old.tflite").exists()
    assert (out / "notes.txt").read_text() == "the user's, added later"
    assert pipeline.demo_files(str(out)) == {
        os.path.relpath(os.path.join(root, n), out)
        for root, _, names in os.walk(out) for n in names
    } - {pipeline.MANIFEST, "notes.txt"}
    results = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in results["results"]}
    bft, twin = rows["MobileNetV2-BFT-0.5"], rows["MobileNetV2-pointwise-0.35"]
    assert bft["twin"] == twin["name"] and bft["fusion"] == "butterfly"

    # Oracle for the pointwise twin: keras.applications' MobileNetV2 of the same width.
    reference = keras.applications.MobileNetV2(input_shape=(32, 32, 1), alpha=0.35, weights=None,
                                               classes=10, classifier_activation=None)
    assert twin["params"] == reference.count_params()
    assert twin["macs"] >= bft["macs"] > 0  # matched or higher twin MACs
    assert bft["params"] < twin["params"]

    for r in (bft, twin):
        assert 0.0 <= r["float_acc"] <= 1.0 and 0.0 <= r["ptq_acc"] <= 1.0
        model_path = out / r["int8_model"]
        assert model_path.stat().st_size == r["int8_size"] > 0
        assert set(r["latency_ms"]) == {"1", "2"} and all(v > 0 for v in r["latency_ms"].values())
        assert r["ptq_parity"]["fully_delegated"] is True
        assert 0.0 <= r["ptq_parity"]["top1_agreement"] <= 1.0
        # QAT: converted without calibration data, fully delegated, scored in LiteRT.
        assert 0.0 <= r["qat_acc"] <= 1.0 and r["qat_size"] > 0
        assert r["qat_parity"]["fully_delegated"] is True

    # The BFT model is also exported for size: its own file, timed in the same run; the twin has no butterfly.
    assert (out / bft["size_objective_model"]).stat().st_size == bft["size_objective_size"] > 0
    assert set(bft["size_objective_latency_ms"]) == {"1", "2"}
    assert twin["size_objective_model"] is None
    assert set(bft["lowering"]) == {"latency", "size"} and "objective='size'" in bft["lowering"]["size"]

    # The saved .tflite loads in LiteRT as a static batch-1 model (what Android gets).
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(out / twin["int8_model"]))
    interpreter.allocate_tensors()
    detail = interpreter.get_input_details()[0]
    assert tuple(detail["shape"]) == (1, 32, 32, 1)

    table = (out / "results.md").read_text()
    assert "| model | params | MACs | float acc | int8 PTQ acc" in table
    assert "MobileNetV2-BFT-0.5" in table and "(twin)" in table
    assert "size obj. KiB" in table and "## Lowering" in table
    assert "Debian package" in table or "subset" in table  # where the data came from
    bft_row = next(line for line in table.splitlines() if line.startswith("| MobileNetV2-BFT-0.5 |"))
    assert f"{100 * bft['qat_acc']:.2f}" in bft_row  # the QAT column is filled, not "-"
    assert "skipped" not in table  # no stage of the pipeline was skipped
    for name in (report.MACS_PLOT, report.LATENCY_PLOT):
        blob = (out / name).read_bytes()
        assert blob.startswith(PNG_SIGNATURE) and len(blob) > 5000
        import matplotlib.image

        assert matplotlib.image.imread(str(out / name)).shape[2] in (3, 4)
    assert not [p for p in os.listdir(out.parent) if p.startswith(".keras-bft-demo-")]  # no temp left


def test_demo_refuses_non_empty_output(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    for force in ([], ["--force"]):  # a folder the demo did not write: refused even with --force
        code = cli.main(["demo", "--tiny", "--output-dir", str(out), *force])
        assert code == 2
        err = capsys.readouterr().err
        assert "--output-dir" in err and str(out) in err and "did not write" in err and "keep.txt" in err
        assert (out / "keep.txt").read_text() == "mine" and os.listdir(out) == ["keep.txt"]
    (tmp_path / "afile").write_text("x")
    assert cli.main(["demo", "--tiny", "--output-dir", str(tmp_path / "afile"), "--force"]) == 2
    assert "is a file" in capsys.readouterr().err


def test_earlier_demo_output_needs_force(tmp_path, capsys):
    out = tmp_path / "results"
    out.mkdir()
    (out / "results.md").write_text("old table")
    pipeline.write_manifest(str(out))
    assert cli.main(["demo", "--tiny", "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "earlier demo" in err and "--force" in err and str(out) in err
    assert sorted(os.listdir(out)) == sorted([pipeline.MANIFEST, "results.md"])


def _folder(root, files):
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _tree(root):
    return {
        os.path.relpath(os.path.join(r, n), root): open(os.path.join(r, n)).read()
        for r, _, names in os.walk(root) for n in names
    }


def test_publish_replaces_only_what_the_demo_wrote(tmp_path):
    new = {"results.md": "new", "models/a.tflite": "new model"}
    # Missing folder: a rename.
    tmp = _folder(tmp_path / "tmp1", new)
    pipeline.write_manifest(str(tmp))
    assert pipeline.publish(str(tmp), str(tmp_path / "fresh")) == str(tmp_path / "fresh")
    assert not tmp.exists() and _tree(tmp_path / "fresh")["models/a.tflite"] == "new model"
    # An earlier demo's folder with a file of the user's: old results replaced, the user's file kept.
    out = _folder(tmp_path / "out", {"results.md": "old", "models/b.tflite": "old model"})
    pipeline.write_manifest(str(out))
    _folder(out, {"mine.txt": "user"})
    tmp = _folder(tmp_path / "tmp2", new)
    pipeline.write_manifest(str(tmp))
    assert pipeline.publish(str(tmp), str(out)) == str(out)
    tree = _tree(out)
    assert {k: v for k, v in tree.items() if k != pipeline.MANIFEST} == {**new, "mine.txt": "user"}
    assert pipeline.demo_files(str(out)) == set(new)


@pytest.mark.parametrize("case", ["manifest-escapes", "clash", "no-manifest"])
def test_publish_never_touches_files_it_did_not_write(tmp_path, case):
    outside = _folder(tmp_path / "outside", {"precious.txt": "keep"})
    out = _folder(tmp_path / "out", {"results.md": "old"})
    pipeline.write_manifest(str(out))
    if case == "manifest-escapes":  # an edited manifest naming a file outside the folder
        manifest = json.loads((out / pipeline.MANIFEST).read_text())
        manifest["files"].append("../outside/precious.txt")
        (out / pipeline.MANIFEST).write_text(json.dumps(manifest))
    elif case == "clash":  # the user put a file where the new results go
        _folder(out, {"models/a.tflite": "the user's"})
    else:
        (out / pipeline.MANIFEST).unlink()
    before = _tree(out)
    tmp = _folder(tmp_path / "tmp", {"results.md": "new", "models/a.tflite": "new model"})
    pipeline.write_manifest(str(tmp))
    went = pipeline.publish(str(tmp), str(out))
    assert went != str(out) and _tree(went)["results.md"] == "new"
    assert _tree(out) == before and _tree(outside) == {"precious.txt": "keep"}


def test_settings_validation():
    assert pipeline.settings_for("quick").mode == "quick"
    full = pipeline.settings_for("full")
    assert full.frontier_twins and len(full.bft_widths) >= 2 and full.train_per_class is None
    with pytest.raises(ValueError, match="mode"):
        pipeline.settings_for("huge")
    with pytest.raises(ValueError, match="epoch"):
        pipeline.settings_for("quick", epoch=3)


def _result(name, fusion, macs, acc, latency, twin=None):
    return pipeline.Result(name, "M", fusion, 1.0, params=1000, macs=macs, float_acc=acc, ptq_acc=acc,
                           latency_ms={1: latency, 2: latency / 2}, twin=twin)


def test_frontier_gaps_interpolate_the_pointwise_frontier():
    results = [
        _result("p1", "pointwise", 100, 0.80, 1.0),
        _result("p2", "pointwise", 300, 0.90, 3.0),
        _result("p3", "pointwise", 400, 0.85, 4.0),  # dominated: not on the frontier
        _result("b1", "butterfly", 200, 0.87, 2.5, twin="p2"),
        _result("b2", "butterfly", 50, 0.70, 0.5, twin="p1"),
    ]
    gaps = {n: (g, vs) for n, _, g, vs in report.frontier_gaps(results, lambda r: r.macs, lambda r: r.float_acc)}
    assert gaps["b1"][0] == pytest.approx(100 * (0.87 - 0.85)) and gaps["b1"][1] is None  # halfway
    assert gaps["b2"] == (None, None)  # cheaper than every pointwise model: no extrapolation
    lat = {n: g for n, _, g, _ in report.frontier_gaps(results, lambda r: r.latency_ms[1], lambda r: r.ptq_acc)}
    assert lat["b1"] == pytest.approx(100 * (0.87 - (0.80 + 0.10 * 0.75)))
    # Beyond the costliest pointwise point: the best pointwise model (cheaper) is the frontier.
    slow = _result("b3", "butterfly", 500, 0.88, 5.0, twin="p3")
    (name, cost, gap, vs), = [g for g in report.frontier_gaps(results + [slow], lambda r: r.macs,
                                                               lambda r: r.float_acc) if g[0] == "b3"]
    assert (cost, vs) == (500, "p2") and gap == pytest.approx(-2.0)
    rows = report.table_rows(results)
    b1 = next(r for r in rows if r[0] == "b1")
    assert b1[-3].startswith("0.67x of p2") and b1[-2] == "0.83x, 0.83x" and b1[-1] == "-3.00, -3.00"


def test_plots_without_latency(tmp_path):
    results = [_result("p", "pointwise", 100, 0.8, 1.0), _result("b", "butterfly", 90, 0.82, 1.1, twin="p")]
    for r in results:
        r.latency_ms = None
    report.plot(results, str(tmp_path / "a.png"), str(tmp_path / "b.png"))
    assert (tmp_path / "a.png").read_bytes().startswith(PNG_SIGNATURE)
    assert (tmp_path / "b.png").read_bytes().startswith(PNG_SIGNATURE)


def test_set_bn_momentum_caps_every_batch_norm():
    model = keras.applications.MobileNetV2(input_shape=(32, 32, 1), alpha=0.35, weights=None, classes=10)
    norms = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    assert len(norms) == 52 and {l.momentum for l in norms} == {0.999}
    pipeline.set_bn_momentum(model, 0.9)
    assert {l.momentum for l in norms} == {0.9}
    small = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(momentum=0.5)])
    pipeline.set_bn_momentum(small, 0.9)
    assert small.layers[0].momentum == 0.5
    # The moving mean follows the data within a few steps at 0.9 (it would stay near 0 at 0.999).
    x = np.full((8, 4), 5.0, np.float32)
    model2 = keras.Sequential([keras.Input((4,)), keras.layers.BatchNormalization(momentum=0.999)])
    pipeline.set_bn_momentum(model2, 0.9)
    model2.compile("sgd", "mse")
    for _ in range(30):
        model2.train_on_batch(x, x)
    assert np.allclose(model2.layers[0].moving_mean.numpy(), 5.0 * (1 - 0.9**30), rtol=1e-3)
