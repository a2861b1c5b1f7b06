"""The grouped_conv lowering and every form the exporter may give a ButterflyFusion equal the dense oracle."""

import keras
import numpy as np
import pytest

from keras_bft import ButterflyFusion
from keras_bft.ops import lowering
from keras_bft.ops import oracle
from keras_bft.ops import plans
from keras_bft.tflite import export_layers
from keras_bft.tflite import search

# (in, out, butterfly_k): square, rectangular both ways, zero-padded, mixed radix.
PLANS = [(64, 64, 4), (96, 48, 4), (48, 96, 4), (58, 58, 4), (60, 100, 8), (27, 27, 3)]


def _kernels(plan, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s.kernel_shape).astype("float32") for s in plan.stages]


@pytest.mark.parametrize("in_ch, out_ch, k", PLANS)
@pytest.mark.parametrize("residual", [False, True])
def test_grouped_conv_lowering_matches_oracle(in_ch, out_ch, k, residual):
    plan = plans.make_plan(in_ch, out_ch, k)
    kernels = _kernels(plan)
    x = np.random.default_rng(1).standard_normal((2, 3, 5, in_ch)).astype("float32")
    expected = x @ oracle.dense_matrix(kernels, plan, residual)
    got = keras.ops.convert_to_numpy(
        lowering.butterfly_transform(x, kernels, plan, residual, "grouped_conv")
    )
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_grouped_conv_is_a_listed_lowering():
    assert "grouped_conv" in lowering.LOWERINGS
    with pytest.raises(ValueError, match="lowering"):
        lowering.butterfly_transform(np.zeros((1, 4), "float32"), [], None, lowering="conv")


def _built_layer(in_ch, out_ch, k, use_bias, seed=0):
    layer = ButterflyFusion(out_ch, butterfly_k=k, use_bias=use_bias, bias_initializer="random_normal")
    layer.build((1, 4, 4, in_ch))
    rng = np.random.default_rng(seed)
    layer.set_weights([rng.standard_normal(w.shape).astype("float32") * 0.5 for w in layer.get_weights()])
    return layer


@pytest.mark.parametrize("in_ch, out_ch, k", PLANS)
def test_every_export_candidate_matches_dense_oracle(in_ch, out_ch, k):
    layer = _built_layer(in_ch, out_ch, k, use_bias=True)
    x = np.random.default_rng(2).standard_normal((1, 4, 4, in_ch)).astype("float32")
    expected = x @ layer.dense_kernel() + keras.ops.convert_to_numpy(layer.bias)
    scale = np.abs(expected).max()
    candidates = [export_layers.dense_fold(layer, x.shape)]
    for segments in search.compositions(layer.plan.num_stages):
        for name in ("grouped_conv", "shuffle"):
            candidates.append(export_layers.staged_export_layer(layer, segments, name))
    assert len(candidates) == 1 + 2 * 2 ** (layer.plan.num_stages - 1)
    for candidate in candidates:
        got = keras.ops.convert_to_numpy(candidate(x))
        np.testing.assert_allclose(got, expected, atol=2e-4 * scale, err_msg=candidate.name)


def test_cost_model_merges_small_radices_and_never_predicts_worse():
    layer = _built_layer(1024, 1024, 4, use_bias=False)
    decision = search.choose_lowering(layer, positions=14 * 14, quantization="int8")
    assert decision.predicted_us <= decision.original_us
    # Five radix-4 passes cost more than fewer, bigger ones on XNNPACK.
    assert decision.kind == "dense" or len(decision.merge_stages) < 5
    small = _built_layer(32, 32, 4, use_bias=False)
    assert search.choose_lowering(small, 64, "int8").kind == "dense"


def test_compositions_are_all_splits():
    assert sorted(search.compositions(3)) == [(1, 1, 1), (1, 2), (2, 1), (3,)]
    assert len(list(search.compositions(5))) == 16
