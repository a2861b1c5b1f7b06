"""keras_bft.ops.fit: butterfly kernels from a dense matrix, checked against the NumPy oracle."""

import numpy as np
import pytest

from keras_bft.ops import fit
from keras_bft.ops import oracle
from keras_bft.ops import plans


def _kernels(plan, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s.kernel_shape) for s in plan.stages]


def _random_init_error(target, plan, residual, seed=0):
    """The relative error of the layer's own random init (ButterflyUniform's range), as replace_pointwise(init='random') starts."""
    from keras_bft.initializers import ButterflyUniform

    limit = ButterflyUniform(plan.num_stages, plan.in_channels, plan.out_channels).limit
    rng = np.random.default_rng(seed)
    kernels = [rng.uniform(-limit, limit, s.kernel_shape) for s in plan.stages]
    dense = oracle.dense_matrix(kernels, plan, residual)
    return np.linalg.norm(dense - target) / np.linalg.norm(target)


TWO_STAGES = [
    (64, 64, dict(radices=(8, 8))),
    (48, 48, dict(radices=(6, 8))),
    (32, 96, dict(radices=(4, 8))),  # rectangular last stage
    (96, 32, dict(radices=(8, 4))),  # rectangular first stage
    (50, 70, dict(num_stages=2)),  # 50 pads to 56 = 7 x 8: zero-padded inputs, cropped outputs
    (24, 60, dict(radices=(4, 6), rectangular="paper")),
]
MORE_STAGES = [
    (64, 64, dict()),  # (4, 4, 4)
    (96, 96, dict()),  # (2, 3, 4, 4)
    (256, 256, dict()),  # (4, 4, 4, 4)
    (58, 58, dict()),  # (3, 4, 5) over 60: padded
    (100, 40, dict()),
    (40, 100, dict()),
    (30, 200, dict(butterfly_k=2)),  # five stages, padded, rectangular
    (40, 100, dict(rectangular="paper")),
    (100, 40, dict(rectangular="paper")),
]


@pytest.mark.parametrize("residual", [True, False])
@pytest.mark.parametrize("cin, cout, kwargs", TWO_STAGES + MORE_STAGES)
def test_recovers_an_exact_butterfly(cin, cout, kwargs, residual):
    plan = plans.make_plan(cin, cout, **kwargs)
    target = oracle.dense_matrix(_kernels(plan, seed=cin + cout), plan, residual)
    result = fit.fit_kernels(target, plan, residual=residual)
    assert result.rel_error < 1e-8
    # The error it reports is the oracle's, recomputed here from its kernels.
    dense = oracle.dense_matrix(result.kernels, plan, residual)
    assert np.linalg.norm(dense - target) / np.linalg.norm(target) == pytest.approx(result.rel_error, abs=1e-12)
    assert [k.shape for k in result.kernels] == [s.kernel_shape for s in plan.stages]


def _trained_like(cin, cout, kind, seed):
    rng = np.random.default_rng(seed)
    if kind == "gaussian":
        return rng.standard_normal((cin, cout)) / np.sqrt(cin)
    low = rng.standard_normal((cin, 4)) @ rng.standard_normal((4, cout)) / np.sqrt(4 * cin)
    return low + 0.1 * rng.standard_normal((cin, cout)) / np.sqrt(cin)


@pytest.mark.parametrize("kind", ["gaussian", "low_rank"])
@pytest.mark.parametrize("cin, cout, kwargs", [(64, 64, {}), (96, 576, {}), (576, 96, {}), (128, 128, dict(num_stages=2)), (64, 128, dict(rectangular="paper"))])
def test_fit_beats_random_init_on_trained_like_kernels(cin, cout, kwargs, kind):
    plan = plans.make_plan(cin, cout, **kwargs)
    target = _trained_like(cin, cout, kind, seed=cin * cout)
    fitted = fit.fit_kernels(target, plan)
    random_error = _random_init_error(target, plan, residual=True)
    assert fitted.rel_error < 0.9 * random_error, (fitted.rel_error, random_error)
    # Also better than the residual alone (all stage kernels zero).
    zeros = oracle.dense_matrix([np.zeros(s.kernel_shape) for s in plan.stages], plan, True)
    assert fitted.rel_error < np.linalg.norm(zeros - target) / np.linalg.norm(target)


def _blocks(matrix, stage):
    """Stage kernel entries of a full matrix: block g's (p, q) sits at row g*a + p, column q*G + g."""
    return np.stack(
        [matrix[g * stage.group_in : (g + 1) * stage.group_in, g :: stage.groups] for g in range(stage.groups)]
    )


def test_two_stage_closed_form_is_optimal():
    """No perturbation of the closed-form factors lowers the error (it is the global optimum)."""
    plan = plans.make_plan(48, 48, radices=(6, 8))
    target = _trained_like(48, 48, "gaussian", seed=1)
    result = fit.fit_kernels(target, plan, residual=True)
    rng = np.random.default_rng(2)
    for _ in range(30):
        moved = [k + 1e-3 * rng.standard_normal(k.shape) for k in result.kernels]
        dense = oracle.dense_matrix(moved, plan, True)
        assert np.linalg.norm(dense - target) / np.linalg.norm(target) >= result.rel_error - 1e-12
    # Nor does a long gradient descent from the layer's random init reach lower.
    kernels = [0.3 * rng.standard_normal(s.kernel_shape) for s in plan.stages]
    for _ in range(300):
        dense = oracle.dense_matrix(kernels, plan, True)
        grad = 2 * (dense - target)
        k1, k2 = kernels
        s1, s2 = (oracle.stage_matrix(k, s) for k, s in zip(kernels, plan.stages))
        g1 = grad @ s2.T
        g2 = s1.T @ grad
        kernels = [
            k1 - 0.05 * _blocks(g1, plan.stages[0]),
            k2 - 0.05 * _blocks(g2, plan.stages[1]),
        ]
    descent = np.linalg.norm(oracle.dense_matrix(kernels, plan, True) - target) / np.linalg.norm(target)
    assert descent >= result.rel_error - 1e-9


def test_alternating_least_squares_never_increases_the_error():
    plan = plans.make_plan(256, 256, butterfly_k=4)
    target = _trained_like(256, 256, "low_rank", seed=3)
    errors = [fit.fit_kernels(target, plan, sweeps=s, tol=0).rel_error for s in (0, 1, 3, 10)]
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < errors[0]


def test_split_and_join_are_inverse():
    plan = plans.make_plan(40, 100, rectangular="paper")
    kernels = _kernels(plan, seed=4)
    sub_stages, per_copy = fit.split_kernels(kernels, plan.stages, plan.copies)
    assert len(per_copy) == plan.copies == 3
    assert [s.groups * plan.copies for s in sub_stages] == [s.groups for s in plan.stages]
    for a, b in zip(fit.join_kernels(per_copy, plan.stages), kernels):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    "target, kwargs, match",
    [
        (np.zeros((8, 9)), {}, r"shape=\(8, 9\)"),
        (np.full((8, 8), np.nan), {}, "NaN"),
        (np.zeros((8, 8)), dict(sweeps=-1), "sweeps=-1"),
    ],
)
def test_bad_arguments(target, kwargs, match):
    with pytest.raises(ValueError, match=match):
        fit.fit_kernels(target, plans.make_plan(8, 8), **kwargs)
