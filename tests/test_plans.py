"""Plans and the NumPy oracle: pure math, no Keras layers."""

import math
import time

import numpy as np
import pytest
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st

from keras_bft.ops import arguments
from keras_bft.ops import oracle
from keras_bft.ops import plans


def _random_kernels(plan, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s.kernel_shape) for s in plan.stages]


def _brute_force_dense(kernels, plan):
    """Dense matrix by running the stage definition on each basis vector, loop by loop."""
    out = np.zeros((plan.in_channels, plan.out_channels))
    for c in range(plan.in_channels):
        v = np.zeros(plan.padded_in)
        v[c] = 1.0
        for kernel, stage in zip(kernels, plan.stages):
            pre = np.zeros((stage.groups, stage.group_out))
            for g in range(stage.groups):
                pre[g] = v[g * stage.group_in : (g + 1) * stage.group_in] @ kernel[g]
            v = pre.T.reshape(-1)  # perfect shuffle: (groups, b) -> (b, groups)
        out[c] = v[: plan.out_channels]
    return out


@pytest.mark.parametrize(
    "n, k, expected",
    [
        (1024, 32, (32, 32)),
        (1024, 4, (4, 4, 4, 4, 4)),
        (256, 16, (16, 16)),
        (64, 4, (4, 4, 4)),
        (96, 4, (2, 3, 4, 4)),
        (16, 16, (16,)),
        (3, 4, (3,)),
    ],
)
def test_square_radices(n, k, expected):
    plan = plans.make_plan(n, n, butterfly_k=k)
    assert plan.radices == expected
    assert plan.padding == (0, 0)
    assert plan.macs == n * sum(expected)


def test_awkward_counts_pad_little_and_stay_cheap():
    # 58 = 2 * 29 has no 3-stage split; padding to 60 = 3 * 4 * 5 is cheaper than 64 = 4 ** 3.
    plan = plans.make_plan(58, 58, butterfly_k=4)
    assert plan.radices == (3, 4, 5) and plan.padding == (2, 2)
    assert plan.macs < 58 * 58


def test_rectangular_cost_follows_the_smaller_side():
    expand = plans.make_plan(96, 576, butterfly_k=4)
    project = plans.make_plan(576, 96, butterfly_k=4)
    # Core butterfly on 96 channels plus one rectangular stage with the smallest radix.
    assert expand.stages[-1].group_in == 2 and expand.stages[-1].group_out == 12
    assert project.stages[0].group_in == 12 and project.stages[0].group_out == 2
    paper_rule = 6 * 96 * sum(plans.make_plan(96, 96, butterfly_k=4).radices)
    assert expand.macs == project.macs == 96 * (4 + 4 + 3) + 576 * 2 < paper_rule


def test_num_stages_sets_depth():
    plan = plans.make_plan(1024, 1024, num_stages=2)
    assert plan.radices == (32, 32)
    assert plans.make_plan(512, 512, num_stages=3).num_stages == 3


@settings(max_examples=60, deadline=None)
@given(
    cin=st.integers(1, 70),
    cout=st.integers(1, 70),
    k=st.integers(2, 9),
)
def test_oracle_matches_stage_definition_and_is_fully_connected(cin, cout, k):
    plan = plans.make_plan(cin, cout, butterfly_k=k)
    kernels = _random_kernels(plan, seed=cin * 100 + cout)
    dense = oracle.dense_matrix(kernels, plan)
    np.testing.assert_allclose(dense, _brute_force_dense(kernels, plan), atol=1e-9)
    # Full connectivity: every output depends on every input.
    assert np.all(dense != 0)
    # Each stage's channel counts chain.
    for a, b in zip(plan.stages, plan.stages[1:]):
        assert a.out_channels == b.in_channels
    assert plan.padded_in >= cin and plan.padded_out >= cout
    assert np.allclose(
        oracle.dense_matrix(kernels, plan, residual=True) - dense,
        np.eye(cin, cout),
    )


def test_explicit_radices_are_used():
    plan = plans.make_plan(64, 128, radices=[8, 8])
    assert plan.radices == (8, 8)
    assert plan.stages[-1].kernel_shape == (8, 8, 16)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"radices": [4, 4]}, r"radices=\[4, 4\] \(product 16\)"),
        ({"radices": []}, r"radices=\[\]"),
        ({"butterfly_k": 1}, "butterfly_k=1"),
        ({"num_stages": 0}, "num_stages=0"),
    ],
)
def test_bad_plan_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plans.make_plan(64, 64, **kwargs)


@pytest.mark.parametrize("cin, cout", [(0, 4), (4, -1)])
def test_bad_channel_counts(cin, cout):
    with pytest.raises(ValueError, match="Received"):
        plans.make_plan(cin, cout)


def test_merge_validates_segments():
    plan = plans.make_plan(256, 256, butterfly_k=4)
    with pytest.raises(ValueError, match=r"segments=\(1, 1\)"):
        plan.merge((1, 1))
    merged = plan.merge((2, 2))
    assert merged.radices == (16, 16)
    assert math.prod(merged.radices) == 256


def _rules_broken(cin, cout, num_stages, radices):
    """The arguments that break a documented rule (keras_bft.ops.arguments, the plan's padding rule)."""
    core = min(cin, cout)
    broken = set()
    if radices is not None and num_stages is not None:
        broken.add("not both")
    if num_stages is not None and not 1 <= num_stages <= core.bit_length():
        broken.add("num_stages")
    if radices is not None and (not radices or min(radices) < 2 or math.prod(radices) != core):
        broken.add("radices")
    return broken


@settings(max_examples=150, deadline=None)
@given(
    cin=st.integers(1, 80),
    cout=st.integers(1, 80),
    num_stages=st.one_of(st.none(), st.integers(-2, 40)),
    radices=st.one_of(st.none(), st.lists(st.integers(-1, 10), max_size=5)),
)
def test_any_arguments_give_a_valid_exact_plan_or_a_fast_value_error(cin, cout, num_stages, radices):
    start = time.perf_counter()
    broken = _rules_broken(cin, cout, num_stages, radices)
    try:
        plan = plans.make_plan(cin, cout, radices=radices, num_stages=num_stages)
    except ValueError as error:
        assert time.perf_counter() - start < 1.0
        assert broken, f"rejected valid arguments: {error}"
        assert "Received" in str(error) and any(rule in str(error) for rule in broken), error
        return
    assert not broken, f"accepted arguments that break {broken}: {plan}"
    core = min(cin, cout)
    padded_core = math.prod(plan.radices)
    # Product and padding rules.
    if radices is not None:
        assert plan.radices == tuple(radices) and padded_core == core
    if num_stages is not None:
        assert plan.num_stages == num_stages
    assert core <= padded_core <= 2 * core
    assert plan.padding[0] <= cin and plan.padding[1] <= cout
    for a, b in zip(plan.stages, plan.stages[1:]):
        assert a.out_channels == b.in_channels
    # The dense oracle equals the stage definition on a small random input.
    kernels = _random_kernels(plan, seed=cin + 100 * cout)
    x = np.random.default_rng(cout).standard_normal((3, cin))
    np.testing.assert_allclose(
        x @ oracle.dense_matrix(kernels, plan), x @ _brute_force_dense(kernels, plan), atol=1e-9
    )


def test_num_stages_beyond_the_padding_rule_fails_fast():
    start = time.perf_counter()
    with pytest.raises(ValueError, match=r"too large for 8 channels.*at most 4 stages.*num_stages=30"):
        plans.make_plan(8, 8, num_stages=30)
    with pytest.raises(ValueError, match=r"num_stages=8"):
        plans.make_plan(8, 8, num_stages=8)  # was silently padded to 256 channels
    assert time.perf_counter() - start < 1.0
    # At the limit the padding equals the real channels, never more.
    plan = plans.make_plan(8, 8, num_stages=4)
    assert plan.radices == (2, 2, 2, 2) and plan.padding == (8, 8)
    assert plans.make_plan(9, 9, num_stages=4).padding == (7, 7)
    assert plans.max_stages(8) == 4 and plans.max_stages(9) == 4 and plans.max_stages(1) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"radices": "24"}, r"radices='24'"),
        ({"radices": [2.5, 4]}, r"radices=\[2.5, 4\]"),
        ({"radices": 8}, r"radices=\[8\] for one stage.*Received: radices=8"),
        ({"radices": [8, 1]}, r"radices=\[8, 1\]"),
        ({"radices": [True, 8]}, r"radices=\[True, 8\]"),
        ({"num_stages": 2.0}, r"num_stages=2.0"),
        ({"num_stages": True}, r"num_stages=True"),
        ({"butterfly_k": "4"}, r"butterfly_k='4'"),
    ],
)
def test_no_silent_coercion(kwargs, match):
    with pytest.raises(ValueError, match=match):
        plans.make_plan(16, 16, **kwargs)


def test_numpy_integers_are_integers():
    plan = plans.make_plan(np.int64(16), np.int32(16), num_stages=np.int64(2))
    assert plan.radices == (4, 4) and type(plan.in_channels) is int
    assert plans.make_plan(16, 16, radices=np.array([4, 4])).radices == (4, 4)


def test_merge_stages_check_is_shared():
    plan = plans.make_plan(64, 64, butterfly_k=4)
    with pytest.raises(ValueError, match=r"segments=\(1.9, 2.2\)"):
        plan.merge((1.9, 2.2))
    with pytest.raises(ValueError, match=r"merge_stages=\[1, 1\] \(sum 2\)"):
        arguments.check_merge_stages([1, 1], plan.num_stages)
# ---------------------------------------------------------------- the paper's in != out rule


def _paper_definition(kernels, plan):
    """The reference code's construction, from square butterflies: concatenate and crop, or sum chunks."""
    from keras_bft.ops import fit

    n = min(plan.in_channels, plan.out_channels)
    sub_stages, per_copy = fit.split_kernels(kernels, plan.stages, plan.copies)
    square = plans.ButterflyPlan(n, n, tuple(sub_stages))
    blocks = [oracle.dense_matrix(k, square, residual=True) for k in per_copy]
    if plan.in_channels < plan.out_channels:
        return np.concatenate(blocks, axis=1)[:, : plan.out_channels]
    chunks = np.concatenate(blocks, axis=0)  # chunk c of the (zero-padded) input goes through copy c
    return chunks[: plan.in_channels]


@settings(max_examples=40, deadline=None)
@given(cin=st.integers(1, 70), cout=st.integers(1, 70), k=st.integers(2, 6))
def test_paper_rule_is_square_copies(cin, cout, k):
    plan = plans.make_plan(cin, cout, butterfly_k=k, rectangular="paper")
    n = min(cin, cout)
    assert plan.copies == -(-max(cin, cout) // n)
    assert plan.radices == plans.make_plan(n, n, butterfly_k=k).radices
    assert plan.macs == plan.copies * plans.make_plan(n, n, butterfly_k=k).macs
    kernels = _random_kernels(plan, seed=cin * 100 + cout)
    dense = oracle.dense_matrix(kernels, plan, residual=True)
    np.testing.assert_allclose(dense, _paper_definition(kernels, plan), atol=1e-9)
    # Without the residual every output still depends on every input.
    assert np.all(oracle.dense_matrix(kernels, plan) != 0)


def test_paper_rule_macs_side_by_side():
    # MobileNetV1's conv_pw_2 at width 1.0 (64 -> 128) and a MobileNetV2 project (576 -> 96).
    assert plans.make_plan(64, 128, rectangular="paper").macs == 2 * 64 * (4 + 4 + 4)
    assert plans.make_plan(64, 128).macs == 64 * (4 + 4) + 128 * 4
    assert plans.make_plan(576, 96, rectangular="paper").macs == 6 * 96 * (4 + 4 + 3 + 2)
    assert plans.make_plan(96, 96, rectangular="paper") == plans.make_plan(96, 96)
    with pytest.raises(ValueError, match="rectangular='max'"):
        plans.make_plan(8, 16, rectangular="max")
