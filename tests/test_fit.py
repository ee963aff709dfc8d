"""Tests for adapeft_optim.fit: the probe math on plain numbers, against closed forms.

Every expectation here is computed independently of the code under test: exact parabolas
(the fit must give back the coefficients that generated the data), a 2x2 normal-equation
solve by Cramer's rule for noisy data, and the formulas of design §2 / §4.6 by hand.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from adapeft_optim.fit import (
    QuadraticFit,
    Reason,
    best_reduction,
    check_fit,
    fit_curvature,
    fit_quadratic,
    newton_update,
    per_parameter_influence,
)

STENCILS = [(-2, -1, 1, 2), (-1, 1), (1, 2)]
LRS = [1e-7, 1e-5, 1e-3, 1.0, 1e3]


def parabola(etas, b, A):
    eta = np.asarray(etas, dtype=np.float64)
    return -eta * b + 0.5 * eta * eta * A


def cramer_fit(etas, y):
    """Least squares of y ≈ -η b + ½η² A by the 2x2 normal equations, solved by hand."""
    eta = np.asarray(etas, dtype=np.float64)
    u, v = -eta, 0.5 * eta * eta
    suu, suv, svv = u @ u, u @ v, v @ v
    suy, svy = u @ y, v @ y
    det = suu * svv - suv * suv
    return (suy * svv - svy * suv) / det, (suu * svy - suv * suy) / det


def r2_with_origin(etas, y, b, A):
    """R² over the probe points and the origin (whose residual is 0), as fit.py documents."""
    resid = y - parabola(etas, b, A)
    y0 = np.append(y, 0.0)
    return 1.0 - float(resid @ resid) / float(np.sum((y0 - y0.mean()) ** 2))


# ---------------------------------------------------------------------------------------
# fit_quadratic on exact parabolas


@pytest.mark.parametrize("stencil", STENCILS, ids=lambda s: "stencil" + "_".join(map(str, s)))
@pytest.mark.parametrize("lr", LRS)
@pytest.mark.parametrize("seed", range(5))
def test_exact_parabola_is_recovered(stencil, lr, seed):
    rng = np.random.default_rng(seed)
    b = rng.uniform(0.1, 10.0) * 10.0 ** rng.uniform(-3, 3)
    # A realistic curvature puts the Newton lr b/A within a few x of the probed lr.
    A = b / lr * rng.uniform(0.25, 4.0)
    etas = [s * lr for s in stencil]
    fit = fit_quadratic(etas, parabola(etas, b, A))
    assert isinstance(fit, QuadraticFit)
    assert fit.b == pytest.approx(b, rel=1e-8)
    assert fit.A == pytest.approx(A, rel=1e-8)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)
    assert check_fit(fit, r2_min=0.99) is None


@pytest.mark.parametrize("stencil", STENCILS, ids=lambda s: "stencil" + "_".join(map(str, s)))
@pytest.mark.parametrize("b, A", [(-1.5, 2.0), (2.0, -3.0), (-0.5, -0.25), (0.7, 0.0)])
def test_exact_parabola_of_any_sign_is_recovered(stencil, b, A):
    etas = [s * 0.1 for s in stencil]
    fit = fit_quadratic(etas, parabola(etas, b, A))
    assert fit.b == pytest.approx(b, rel=1e-10)
    assert fit.A == pytest.approx(A, rel=1e-10, abs=1e-10)


def test_exact_parabola_at_unequal_points():
    etas = [-3e-4, -1e-4, 5e-5, 2e-4, 7e-4]
    b, A = 0.37, 4.1e3
    fit = fit_quadratic(etas, parabola(etas, b, A))
    assert fit.b == pytest.approx(b, rel=1e-8)
    assert fit.A == pytest.approx(A, rel=1e-8)
    assert fit.r2 == pytest.approx(1.0, abs=1e-12)


def test_exact_data_has_zero_standard_errors_without_noise_and_positive_with_it():
    etas = [-2.0, -1.0, 1.0, 2.0]
    y = parabola(etas, 1.0, 2.0)
    quiet = fit_quadratic(etas, y)
    assert quiet.se_b == pytest.approx(0.0, abs=1e-12)
    assert quiet.se_A == pytest.approx(0.0, abs=1e-12)
    noisy = fit_quadratic(etas, y, noise=1e-3)
    assert noisy.se_b > 0 and noisy.se_A > 0
    assert (noisy.b, noisy.A) == pytest.approx((quiet.b, quiet.A), rel=1e-12)
    # The standard errors scale with the noise level they are given.
    louder = fit_quadratic(etas, y, noise=1e-1)
    assert louder.se_A / noisy.se_A == pytest.approx(100.0, rel=1e-9)
    assert louder.se_b / noisy.se_b == pytest.approx(100.0, rel=1e-9)


# ---------------------------------------------------------------------------------------
# fit_quadratic on noisy data


@pytest.mark.parametrize("stencil", [(-2, -1, 1, 2), (-3, -2, -1, 1, 2, 3)])
def test_noisy_fit_is_the_least_squares_solution(stencil):
    rng = np.random.default_rng(7)
    etas = [0.05 * s for s in stencil]
    y = parabola(etas, 1.3, 20.0) + rng.normal(0.0, 1e-3, len(etas))
    fit = fit_quadratic(etas, y)
    b_ls, A_ls = cramer_fit(etas, y)
    assert fit.b == pytest.approx(b_ls, rel=1e-9)
    assert fit.A == pytest.approx(A_ls, rel=1e-9)
    assert fit.r2 == pytest.approx(r2_with_origin(etas, y, b_ls, A_ls), abs=1e-12)


def test_noise_lowers_r2():
    rng = np.random.default_rng(3)
    etas = [-0.2, -0.1, 0.1, 0.2]
    exact = parabola(etas, 1.0, 10.0)
    pattern = rng.normal(0.0, 1.0, len(etas))
    sigmas = (0.0, 1e-4, 1e-3, 1e-2, 3e-2)
    r2s = [fit_quadratic(etas, exact + sigma * pattern).r2 for sigma in sigmas]
    assert r2s[0] == pytest.approx(1.0, abs=1e-12)
    assert all(r < 1.0 for r in r2s[1:])
    assert all(later < earlier for earlier, later in zip(r2s, r2s[1:]))


def test_non_finite_losses_give_nan_fit():
    fit = fit_quadratic([-1.0, 1.0, 2.0], [0.1, float("nan"), 0.3])
    assert all(math.isnan(v) for v in fit)
    fit = fit_quadratic([-1.0, 1.0], [float("inf"), 0.3])
    assert all(math.isnan(v) for v in fit)


def test_mismatched_inputs_raise():
    with pytest.raises(ValueError, match="equal length"):
        fit_quadratic([-1.0, 1.0, 2.0], [0.1, 0.2])
    with pytest.raises(ValueError, match="1-D"):
        fit_quadratic([[-1.0, 1.0]], [[0.1, 0.2]])


# ---------------------------------------------------------------------------------------
# check_fit: every reason


def test_check_fit_accepts_a_good_fit():
    good = QuadraticFit(b=1.0, A=2.0, r2=0.999, se_b=0.01, se_A=0.01)
    assert check_fit(good, r2_min=0.99) is None


@pytest.mark.parametrize(
    "fit, reason",
    [
        (QuadraticFit(math.nan, 1.0, 1.0, 0.0, 0.0), "non-finite"),
        (QuadraticFit(1.0, math.inf, 1.0, 0.0, 0.0), "non-finite"),
        (QuadraticFit(1.0, 1.0, math.nan, 0.0, 0.0), "non-finite"),
        (QuadraticFit(1.0, -1.0, 1.0, 0.0, 0.0), "non-positive curvature"),
        (QuadraticFit(1.0, -1.0, 1.0, 0.0, 0.1), "non-positive curvature"),  # -1 is 10 se below 0
        (QuadraticFit(1.0, 0.2, 1.0, 0.01, 0.1), "curvature below noise"),  # 0.2 <= 3 * 0.1
        (QuadraticFit(1.0, -0.2, 1.0, 0.01, 0.1), "curvature below noise"),  # sign not known either
        (QuadraticFit(-1.0, 1.0, 1.0, 0.0, 0.0), "non-positive slope"),
        (QuadraticFit(0.0, 1.0, 1.0, 0.0, 0.0), "non-positive slope"),
        (QuadraticFit(1.0, 1.0, 0.95, 0.0, 0.0), "R2 below r2_min"),
    ],
)
def test_check_fit_reasons(fit, reason):
    got = check_fit(fit, r2_min=0.99)
    assert got is not None and reason in got


def test_check_fit_rejects_zero_curvature():
    assert check_fit(QuadraticFit(1.0, 0.0, 1.0, 0.0, 0.0), r2_min=0.99) is not None


def test_check_fit_z_sets_the_noise_threshold():
    fit = QuadraticFit(b=1.0, A=1.0, r2=1.0, se_b=0.0, se_A=0.4)
    assert check_fit(fit, r2_min=0.99, z=2.0) is None  # 1.0 > 0.8
    assert check_fit(fit, r2_min=0.99, z=3.0) == "curvature below noise"  # 1.0 <= 1.2


def test_check_fit_reasons_from_data():
    etas = [-2e-3, -1e-3, 1e-3, 2e-3]
    b, A = 0.5, 400.0
    assert check_fit(fit_quadratic(etas, [0.1, float("nan"), 0.2, 0.3]), 0.99) == "non-finite loss"
    assert check_fit(fit_quadratic(etas, parabola(etas, b, -A)), 0.99) == "non-positive curvature"
    assert check_fit(fit_quadratic(etas, parabola(etas, -b, A)), 0.99) == "non-positive slope"
    # Exact numbers, but rounded at a level far above ½η²A = 8e-4: the curvature is not known.
    rounded = fit_quadratic(etas, parabola(etas, b, A), noise=1.0)
    assert check_fit(rounded, 0.99) == "curvature below noise"
    # A cubic term is odd: it leaves the curvature estimate exact but spoils the parabola's R².
    cubic = parabola(etas, b, A) - 3e5 * np.asarray(etas) ** 3
    fit = fit_quadratic(etas, cubic)
    assert fit.A == pytest.approx(A, rel=1e-9) and fit.b > 0
    assert fit.r2 < 0.99
    assert check_fit(fit, 0.99) == "R2 below r2_min"
    assert check_fit(fit, fit.r2 - 1e-9) is None


# ---------------------------------------------------------------------------------------
# newton_update and per_parameter_influence


@pytest.mark.parametrize(
    "current, optimum, smoothing, max_change, expected",
    [
        (1.0, 1.5, 0.9, 2.0, 0.9 * 1.0 + 0.1 * 1.5),  # inside the clamp
        (1.0, 0.7, 0.9, 2.0, 0.9 * 1.0 + 0.1 * 0.7),
        (1.0, 10.0, 0.9, 2.0, 0.9 * 1.0 + 0.1 * 2.0),  # clamped up to current * max_change
        (1.0, 0.01, 0.9, 2.0, 0.9 * 1.0 + 0.1 * 0.5),  # clamped down to current / max_change
        (1.0, -3.0, 0.9, 2.0, 0.9 * 1.0 + 0.1 * 0.5),
        (2e-4, 1e-3, 0.0, 3.0, 6e-4),  # no smoothing: the clamped optimum itself
        (2e-4, 1e-5, 0.0, 3.0, 2e-4 / 3.0),
        (2e-4, 3e-4, 0.0, 3.0, 3e-4),
        (5e-5, 1e-3, 0.5, 1.0, 5e-5),  # max_change 1: the lr cannot move
    ],
)
def test_newton_update_closed_form(current, optimum, smoothing, max_change, expected):
    got = newton_update(current, optimum, smoothing, max_change)
    assert got == pytest.approx(expected, rel=1e-14)


def test_ppi_does_not_depend_on_the_units_of_the_probe_points():
    # Fitting in units of the lr (t = η / lr) gives (lr·b, lr²·A); b²/(A n) is the same.
    b, A, lr, n = 0.8, 3e3, 1e-4, 1000
    ts = np.array([-2.0, -1.0, 1.0, 2.0])
    in_t = fit_quadratic(ts, parabola(ts * lr, b, A))
    in_eta = fit_quadratic(ts * lr, parabola(ts * lr, b, A))
    expected = b * b / (A * n)
    assert per_parameter_influence(in_t.b, in_t.A, n) == pytest.approx(expected, rel=1e-9)
    assert per_parameter_influence(in_eta.b, in_eta.A, n) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(
    "b, A, case",
    [
        (2.0, 1.0, "interior"),  # convex, optimum b/A = 2 inside η ≤ 3
        (2.0, 0.25, "trust region"),  # convex, optimum 8 beyond the region
        (2.0, 0.0, "trust region"),  # flat: linear line, best at the edge
        (2.0, -3.0, "trust region"),  # concave: best at the edge
        (-1.0, 2.0, "no descent"),  # uphill: no positive step helps
        (-1.0, -2.0, "trust region"),  # uphill at first, concave enough to gain at the edge
        (-1.0, -0.5, "no descent"),  # uphill, not concave enough
    ],
)
def test_best_reduction_is_the_exact_best_step_within_the_trust_region(b, A, case):
    eta_max = 3.0
    value, got = best_reduction(b, A, eta_max)
    assert got == case
    etas = np.linspace(0.0, eta_max, 300_001)[1:]  # brute force over 0 < η ≤ η_max
    brute = max(float(np.max(etas * b - 0.5 * etas**2 * A)), 0.0)
    assert value == pytest.approx(brute, rel=1e-9, abs=1e-12)
    if case == "interior":
        assert value == pytest.approx(b * b / (2 * A))  # the paper's b²/A, halved


@pytest.mark.parametrize("etas", [(1,), (-1, 1), (-2, 2), (-2, -1, 1, 2), (1, 3)])
@pytest.mark.parametrize("lr", LRS)
def test_fit_curvature_with_a_known_slope_recovers_the_parabola(etas, lr):
    ts = [e * lr for e in etas]
    b, A = 3.0 / lr, 5.0 / lr**2  # the Newton step b/A = 0.6 lr, as a run's lines scale
    fit = fit_curvature(ts, parabola(ts, b, A), b)
    assert fit.b == b and fit.se_b == 0.0
    assert fit.A == pytest.approx(A, rel=1e-12) and fit.r2 == pytest.approx(1.0, abs=1e-12)


def test_fit_curvature_on_a_symmetric_pair_ignores_the_odd_term_but_shows_it_in_r2():
    ts = np.array([-0.5, 0.5])
    b, A, T = 2.0, 3.0, 4.0
    dl = parabola(ts, b, A) + T * ts**3 / 6  # a cubic line: its odd part is not a parabola's
    fit = fit_curvature(ts, dl, b, noise=1e-12)
    assert fit.A == pytest.approx(A, rel=1e-12)  # (ΔL(h) + ΔL(−h)) / h² = A exactly
    assert fit.se_A == pytest.approx(1e-12 / math.sqrt(0.5) / 0.25, rel=1e-9)  # the noise floor alone
    assert fit.r2 < 1.0
    one_sided = fit_curvature(ts[1:], dl[1:], b)  # one point: the cubic enters A, as T·h/3
    assert one_sided.A == pytest.approx(A + T * 0.5 / 3, rel=1e-12)


def test_fit_curvature_of_non_finite_losses_is_nan():
    fit = fit_curvature([1.0, -1.0], [math.inf, 0.0], 1.0)
    assert all(math.isnan(v) for v in fit)
    assert check_fit(fit, 0.9) == Reason.NON_FINITE
