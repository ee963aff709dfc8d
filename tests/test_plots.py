"""Tests for adapeft_optim.plots: Appendix A.1 processing (hand-computed) and the figures."""

from __future__ import annotations

import math
import sys
from typing import NamedTuple

import numpy as np
import pytest

from adapeft_optim import plots
from adapeft_optim.plots import (
    appi_curves,
    ema,
    heatmap_caption,
    heatmap_values,
    iqr_mask,
    plot_appi_curves,
    plot_frontier,
    plot_ppi_heatmap,
    ppi_matrix,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def rec(step, group, ppi, accepted=True, **extra):
    """A history record shaped like GeNAdaPEFT.history's."""
    base = {
        "step": step,
        "group": group,
        "b": 1.0,
        "A": 1.0,
        "r2": 1.0 if accepted else 0.5,
        "ppi": ppi if accepted else 0.0,
        "newton_lr": 1e-3,
        "accepted": accepted,
        "reason": None if accepted else "r2 below r2_min",
        "spacing": 1e-3,
    }
    base.update(extra)
    return base


def table_history(table, steps):
    """History from {group: [ppi or None (rejected) or "skip" (not probed)]}, step-major."""
    out = []
    for j, step in enumerate(steps):
        for group, row in table.items():
            v = row[j]
            if v == "skip":
                continue
            out.append(rec(step, group, v if v is not None else 0.0, accepted=v is not None))
    return out


# Hand-worked example for heatmap_values (k=3, alpha=0.5); numbers derived in the comments.
STEPS = [0, 16, 32, 48, 64]
TABLE = {
    # sorted [100,100,100,200,1e6]: Q1 = v[1] = 100, Q3 = v[3] = 200, fence [-200, 500],
    # so 1e6 is dropped; EMA(0.5): 100, 150, 125, 112.5, 112.5 (carried)
    "head": [100.0, 200.0, 100.0, 100.0, 1e6],
    # finite sorted [10,10,20,30]: Q1 at 0.75 -> 10, Q3 at 2.25 -> 22.5, fence [-27.5, 60];
    # EMA: 10, 20, 20 (rejected, carried), 15, 17.5
    "norm": [10.0, 30.0, None, 10.0, 20.0],
    # sorted [1,1,1,2,2]: fence [-2, 5]; EMA: 1, 1.5, 1.25, 1.625, 1.3125
    "others": [1.0, 2.0, 1.0, 2.0, 1.0],
}
HEAD_EMA = [100.0, 150.0, 125.0, 112.5, 112.5]
NORM_EMA = [10.0, 20.0, 20.0, 15.0, 17.5]
OTHERS_EMA = [1.0, 1.5, 1.25, 1.625, 1.3125]


# --------------------------------------------------------------------------------------
# iqr_mask
# --------------------------------------------------------------------------------------


def test_iqr_mask_hand_computed():
    # n=5: Q1 at position 4*0.25 = 1 -> 2, Q3 at 3 -> 4, IQR 2, fence [2-6, 4+6] = [-4, 10]
    np.testing.assert_array_equal(iqr_mask([1, 2, 3, 4, 100], k=3), [True] * 4 + [False])
    # the fence is inclusive: 10 sits exactly on Q3 + 3 IQR
    np.testing.assert_array_equal(iqr_mask([1, 2, 3, 4, 10], k=3), [True] * 5)
    np.testing.assert_array_equal(iqr_mask([1, 2, 3, 4, 10.001], k=3), [True] * 4 + [False])


def test_iqr_mask_interpolated_quartiles():
    # sorted [1,2,3,4,7,100], n-1 = 5: Q1 at 1.25 -> 2.25, Q3 at 3.75 -> 4 + 0.75*3 = 6.25,
    # IQR 4; k=0.5 gives the fence [0.25, 8.25]; unsorted input on purpose
    values = [7, 100, 1, 3, 2, 4]
    np.testing.assert_array_equal(iqr_mask(values, k=0.5), [True, False, True, True, True, True])
    # k=0: only [2.25, 6.25]
    np.testing.assert_array_equal(iqr_mask(values, k=0.0), [False, False, False, True, False, True])


def test_iqr_mask_nonfinite_are_outside_and_ignored_by_quartiles():
    # the quartiles come from [1,2,3,4,100] alone, as in the first test
    mask = iqr_mask([1, np.nan, 2, 3, np.inf, 4, 100, -np.inf], k=3)
    np.testing.assert_array_equal(mask, [True, False, True, True, False, True, False, False])
    np.testing.assert_array_equal(iqr_mask([np.nan, np.nan]), [False, False])
    assert iqr_mask([]).shape == (0,)


@pytest.mark.parametrize("k", [-1.0, math.nan, math.inf])
def test_iqr_mask_rejects_bad_k(k):
    with pytest.raises(ValueError, match="Invalid k"):
        iqr_mask([1.0, 2.0], k=k)


def test_iqr_mask_rejects_2d():
    with pytest.raises(ValueError, match="1-D"):
        iqr_mask([[1.0, 2.0]])


# --------------------------------------------------------------------------------------
# ema
# --------------------------------------------------------------------------------------


def test_ema_hand_computed_with_gap():
    # s0 = 1; s1 = .9*1 + .1*2 = 1.1; NaN carries 1.1; s3 = .9*1.1 + .1*4 = 1.39
    np.testing.assert_allclose(ema([1, 2, np.nan, 4], alpha=0.9), [1.0, 1.1, 1.1, 1.39], rtol=1e-15)


def test_ema_leading_missing_and_extremes():
    np.testing.assert_allclose(ema([np.nan, 2, 4], alpha=0.9), [np.nan, 2.0, 2.2], rtol=1e-15)
    np.testing.assert_array_equal(ema([3, np.nan, 5], alpha=0.0), [3.0, 3.0, 5.0])
    np.testing.assert_array_equal(ema([3, 7, 5], alpha=1.0), [3.0, 3.0, 3.0])
    assert np.isnan(ema([np.nan, np.inf])).all()


@pytest.mark.parametrize("alpha", [-0.1, 1.5, math.nan])
def test_ema_rejects_bad_alpha(alpha):
    with pytest.raises(ValueError, match="Invalid alpha"):
        ema([1.0], alpha=alpha)


# --------------------------------------------------------------------------------------
# ppi_matrix / appi_curves
# --------------------------------------------------------------------------------------


def test_ppi_matrix_rejected_and_missing_are_nan():
    history = [
        rec(0, "lora_B", 5.0),
        rec(0, "norm", 0.0, accepted=False),
        rec(8, "norm", 3.0),
        rec(8, "lora_B", 6.0),
        rec(16, "lora_B", 7.0),  # norm masked out: no record at 16
        rec(16, "bias", 2.0),
    ]
    names, steps, m = ppi_matrix(history)
    assert names == ["lora_B", "norm", "bias"]
    assert steps.dtype == np.int64
    np.testing.assert_array_equal(steps, [0, 8, 16])
    expected = np.array([[5.0, 6.0, 7.0], [np.nan, 3.0, np.nan], [np.nan, np.nan, 2.0]])
    np.testing.assert_array_equal(m, expected)


def test_ppi_matrix_groups_order_and_subset():
    history = [rec(0, "a", 1.0), rec(0, "b", 2.0), rec(4, "c", 3.0)]
    names, steps, m = ppi_matrix(history, groups=["b", "a"])
    assert names == ["b", "a"]
    # steps come from the chosen groups only
    np.testing.assert_array_equal(steps, [0])
    np.testing.assert_array_equal(m, [[2.0], [1.0]])


def test_ppi_matrix_accepts_optimizer_like_object_and_empty():
    class Opt:
        history = [rec(3, "head", 0.5)]

    names, steps, m = ppi_matrix(Opt())
    assert names == ["head"] and steps.tolist() == [3] and m.tolist() == [[0.5]]
    names, steps, m = ppi_matrix([])
    assert names == [] and steps.shape == (0,) and m.shape == (0, 0)


def test_ppi_matrix_input_errors():
    history = [rec(0, "a", 1.0)]
    with pytest.raises(ValueError, match=r"groups \['nope'\] have no record.*\['a'\]"):
        ppi_matrix(history, groups=["nope"])
    with pytest.raises(ValueError, match=r"repeats \['a'\]"):
        ppi_matrix(history, groups=["a", "a"])
    with pytest.raises(TypeError, match="wrap it in a list"):
        ppi_matrix(history, groups="a")
    with pytest.raises(ValueError, match=r"record 1 has no \['accepted'\]"):
        ppi_matrix(history + [{"step": 1, "group": "a", "ppi": 1.0}])
    with pytest.raises(ValueError, match="group 'a' has two records at step 0"):
        ppi_matrix(history + [rec(0, "a", 2.0)])
    with pytest.raises(TypeError, match="non-integer step 1.5"):
        ppi_matrix([rec(1.5, "a", 1.0)])
    with pytest.raises(TypeError, match="history must be a list"):
        ppi_matrix(42)


def test_appi_curves_cumulative_forward_filled():
    history = table_history({"a": [1.0, None, 2.0, "skip"], "b": [None, 4.0, "skip", 8.0]}, steps=[0, 8, 16, 24])
    names, steps, m = appi_curves(history)
    assert names == ["a", "b"]
    np.testing.assert_array_equal(steps, [0, 8, 16, 24])
    np.testing.assert_array_equal(m, [[1.0, 1.0, 3.0, 3.0], [0.0, 4.0, 4.0, 12.0]])


def test_valued_probes_count_whether_accepted_or_not():
    # "case" decides (Note [valued probes]); without a "case" key, "accepted" does.
    history = [
        rec(0, "a", 2.0, accepted=False, case="trust region"),
        rec(0, "b", 0.0, accepted=False, case=None),
        rec(4, "a", 3.0, accepted=True, case="interior"),
        rec(4, "b", 5.0),  # an old record: no case, accepted
    ]
    history[0]["ppi"] = 2.0  # rec() zeroes the ppi of a probe that was not accepted
    _, _, m = ppi_matrix(history)
    np.testing.assert_array_equal(m, [[2.0, 3.0], [np.nan, 5.0]])
    _, _, curves = appi_curves(history)
    np.testing.assert_array_equal(curves, [[2.0, 5.0], [0.0, 5.0]])


def test_appi_curves_end_at_the_optimizers_appi():
    # A real run whose history holds trust-region probes (valued, not accepted): the curves'
    # last column is opt.appi, which sums every valued probe.
    import torch
    from torch import nn

    from adapeft_optim import GeNAdaPEFT

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.LayerNorm(16), nn.Linear(16, 1))
    g = torch.Generator().manual_seed(0)

    def batch():
        x = torch.randn(32, 8, generator=g)
        return {"x": x, "y": x.sum(1, keepdim=True).sin()}

    def loss(b):
        return nn.functional.mse_loss(model(b["x"]), b["y"])

    groups = {
        "first": list(model[0].parameters()),
        "norm": list(model[2].parameters()),
        "last": list(model[3].parameters()),
    }
    opt = GeNAdaPEFT(
        torch.optim.AdamW(model.parameters(), lr=1e-5),
        closure=loss,
        probe_data=[batch() for _ in range(8)],
        groups=groups,
        lazy=2,
    )
    for _ in range(16):
        loss(batch()).backward()
        opt.step()
        opt.zero_grad()
    assert any(r["case"] == "trust region" and r["ppi"] > 0 for r in opt.history)
    names, _, curves = appi_curves(opt)
    np.testing.assert_allclose(curves[:, -1], [opt.appi[n] for n in names], rtol=1e-12)


def test_appi_curves_outlier_removal():
    # fence of [1,2,3,4,100] with k=3 is [-4, 10]: 100 is left out of the sum
    history = table_history({"a": [1.0, 2.0, 3.0, 4.0, 100.0]}, steps=[0, 1, 2, 3, 4])
    _, _, raw = appi_curves(history)
    _, _, clean = appi_curves(history, k=3.0)
    np.testing.assert_array_equal(raw, [[1, 3, 6, 10, 110]])
    np.testing.assert_array_equal(clean, [[1, 3, 6, 10, 10]])


# --------------------------------------------------------------------------------------
# heatmap_values
# --------------------------------------------------------------------------------------


def test_heatmap_values_hand_computed():
    history = table_history(TABLE, STEPS)
    names, steps, m = heatmap_values(history, reference="others", k=3.0, alpha=0.5)
    assert names == ["head", "norm", "others"]
    np.testing.assert_array_equal(steps, STEPS)
    expected = np.log10(np.array([HEAD_EMA, NORM_EMA, OTHERS_EMA]) / np.array(OTHERS_EMA))
    np.testing.assert_allclose(m, expected, rtol=1e-12, atol=1e-15)
    # the first three head cells are exactly 100x the reference
    np.testing.assert_allclose(m[0, :3], 2.0, rtol=1e-12)
    np.testing.assert_array_equal(m[2], 0.0)


def test_heatmap_values_reference_missing_falls_back_to_first_row():
    table = {g: TABLE[g] for g in ("norm", "head")}
    names, _, m = heatmap_values(table_history(table, STEPS), reference="others", k=3.0, alpha=0.5)
    assert names == ["norm", "head"]
    np.testing.assert_array_equal(m[0], 0.0)
    np.testing.assert_allclose(m[1], np.log10(np.array(HEAD_EMA) / np.array(NORM_EMA)), rtol=1e-12)


def test_heatmap_values_without_reference_or_processing():
    history = table_history(TABLE, STEPS)
    _, _, m = heatmap_values(history, reference=None, k=3.0, alpha=0.5)
    np.testing.assert_allclose(m, np.log10([HEAD_EMA, NORM_EMA, OTHERS_EMA]), rtol=1e-12)
    # k=None and alpha=0: plain log10(PPI / PPI_others); the rejected norm cell carries the
    # previous value 30, and head keeps its 1e6 outlier
    _, _, raw = heatmap_values(history, reference="others", k=None, alpha=0.0)
    ppi = np.array([[30.0 if v is None else v for v in row] for row in TABLE.values()])
    np.testing.assert_allclose(raw, np.log10(ppi / ppi[2]), rtol=1e-12)
    assert raw[0, 4] == pytest.approx(6.0)


def test_heatmap_values_nan_until_reference_starts():
    # the reference's first probe is rejected: that column has no unit of influence yet
    table = {"others": [None, 2.0, 4.0], "head": [10.0, 20.0, 40.0]}
    history = table_history(table, steps=[0, 1, 2])
    _, _, m = heatmap_values(history, k=None, alpha=0.0)
    assert np.isnan(m[:, 0]).all()
    np.testing.assert_allclose(m[:, 1:], [[0.0, 0.0], [1.0, 1.0]], atol=1e-15)


# --------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------


class FrontierPoint(NamedTuple):
    fraction: float
    value: float
    groups: tuple


FRONTIER = [
    FrontierPoint(0.0, 0.0, ()),
    FrontierPoint(0.001, 0.2, ("norm",)),
    FrontierPoint(0.004, 0.35, ("norm", "lora_B")),
    FrontierPoint(0.05, 0.4, ("norm", "lora_B", "head")),
    FrontierPoint(1.0, 0.45, ("norm", "lora_B", "head", "others")),
]


def read_png(path):
    from matplotlib.image import imread

    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC
    return imread(path)


def assert_not_blank(img):
    rgb = img[..., :3].reshape(-1, 3)
    assert rgb.var(axis=0).sum() > 0
    assert len(np.unique(rgb, axis=0)) > 10


def test_plot_ppi_heatmap_writes_png(tmp_path):
    out = plot_ppi_heatmap(
        table_history(TABLE, STEPS),
        tmp_path / "sub" / "heat.png",
        title="t",
        figsize=(6, 3),
        dpi=50,
    )
    assert out == tmp_path / "sub" / "heat.png"
    img = read_png(out)
    assert img.shape == (150, 300, 4)
    assert_not_blank(img)


def test_heatmap_figure_shows_processed_values():
    history = table_history(TABLE, STEPS)
    fig = plots.heatmap._heatmap_figure(history, "others", 3.0, 0.5, None, None, "viridis", None, 50)
    ax = fig.axes[0]
    assert fig.get_supxlabel() == ""  # no caption unless asked for
    _, _, expected = heatmap_values(history, reference="others", k=3.0, alpha=0.5)
    np.testing.assert_array_equal(ax.images[0].get_array().filled(np.nan), expected)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["head", "norm", "others"]
    assert [t.get_text() for t in ax.get_xticklabels()] == [str(s) for s in STEPS]
    assert fig.axes[1].get_ylabel() == "log10 PPI / PPI(others)"
    # without an "others" row the label names the row actually used
    only_norm = table_history({"norm": TABLE["norm"]}, STEPS)
    fig = plots.heatmap._heatmap_figure(only_norm, "others", 3.0, 0.5, None, None, "viridis", None, 50)
    assert fig.axes[1].get_ylabel() == "log10 PPI / PPI(norm)"


def test_heatmap_caption_says_how_cells_were_made_and_what_grey_is():
    history = table_history(TABLE, STEPS)
    fig = plots.heatmap._heatmap_figure(history, "others", 3.0, 0.5, None, None, "viridis", None, 50, caption=True)
    assert " ".join(fig.get_supxlabel().split()) == (
        "PPI of the valued probes: IQR outliers removed (k=3), EMA-smoothed (weight 0.5 on "
        "the past), gaps carried forward, divided by the 'others' row; grey: no valued probe "
        "yet (of the group or of the reference), or a PPI of 0"
    )
    assert heatmap_caption(None, None, 0.0) == (
        "PPI of the valued probes: gaps carried forward; grey: no valued probe yet, or a PPI of 0"
    )


def test_plot_appi_curves_writes_png_and_uses_log_axis(tmp_path):
    history = table_history(TABLE, STEPS)
    out = plot_appi_curves(history, tmp_path / "appi.png", figsize=(5, 4), dpi=60)
    img = read_png(out)
    assert img.shape == (240, 300, 4)
    assert_not_blank(img)
    fig = plots.appi._appi_figure(history, None, None, None, None, (5, 4), 60)
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    names, steps, appi = appi_curves(history)
    assert [line.get_label() for line in ax.get_lines()] == names
    for line, row in zip(ax.get_lines(), appi):
        np.testing.assert_array_equal(line.get_xdata(), steps)
        np.testing.assert_array_equal(line.get_ydata(), row)


def test_appi_figure_linear_when_log_impossible():
    history = table_history({"a": [None, None], "b": [None, None]}, steps=[0, 1])
    fig = plots.appi._appi_figure(history, None, None, None, None, (5, 4), 60)
    assert fig.axes[0].get_yscale() == "linear"


def test_plot_frontier_writes_png(tmp_path):
    recipes = {"LoRA": (0.004, 0.3), "BitFit": (0.001, 0.15)}
    out = plot_frontier(FRONTIER, tmp_path / "frontier", recipes=recipes, ylabel="train loss", dpi=40)
    assert out == tmp_path / "frontier.png"
    img = read_png(out)
    assert img.shape == (180, 340, 4)
    assert_not_blank(img)


def legend_texts(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_frontier_figure_content():
    recipes = {"LoRA": (0.004, 0.3)}
    exact = [(0.002, 0.3, ["lora_B"]), (0.5, 0.44)]
    series = {"greedy": FRONTIER, "exact": exact}
    fig = plots.frontier._frontier_figure(series, recipes, "loss", None, True, (7, 4.5), 40)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_ylabel() == "loss"
    greedy, exact_line = ax.get_lines()
    # the fraction-0 point cannot sit on a log axis; x is in percent
    np.testing.assert_allclose(greedy.get_xdata(), [0.1, 0.4, 5.0, 100.0])
    np.testing.assert_allclose(greedy.get_ydata(), [0.2, 0.35, 0.4, 0.45])
    np.testing.assert_allclose(exact_line.get_xdata(), [0.2, 50.0])
    # points are numbered per frontier (a, b); the legend says what each number adds
    assert [t.get_text() for t in ax.texts] == ["a1", "a2", "a3", "a4", "b1"]
    assert legend_texts(ax) == [
        "greedy",
        "a1  norm",
        "a2  +lora_B",
        "a3  +head",
        "a4  +others",
        "exact",
        "b1  lora_B",
        "LoRA",
    ]
    np.testing.assert_allclose(ax.collections[0].get_offsets(), [[0.4, 0.3]])


def test_frontier_marks_budget_and_selection():
    selection = (0.004, 0.35, ("norm", "lora_B"))
    fig = plots.frontier._frontier_figure(
        FRONTIER, None, "y", None, True, (7, 4.5), 40, budget=0.01, selection=selection
    )
    ax = fig.axes[0]
    budget_line = [line for line in ax.get_lines() if line.get_label() == "budget 1%"]
    assert len(budget_line) == 1 and list(budget_line[0].get_xdata()) == [1.0, 1.0]
    star = [c for c in ax.collections if c.get_label() == "selection (norm+lora_B)"]
    np.testing.assert_allclose(star[0].get_offsets(), [[0.4, 0.35]])
    assert {"budget 1%", "selection (norm+lora_B)"} <= set(legend_texts(ax))
    with pytest.raises(ValueError, match=r"Invalid budget: 1.5; use a fraction"):
        plots.frontier._frontier_figure(FRONTIER, None, "y", None, True, (7, 4.5), 40, budget=1.5)


def test_a_single_labelled_point_has_a_legend_entry():
    # comparison.png: one AdaPEFT point among the recipes, each named in the legend
    fig = plots.frontier._frontier_figure(
        {"AdaPEFT (head+embed)": [(0.02, -2.2, ("head", "embed"))]},
        {"LoRA": (0.04, -1.6), "BitFit": (0.005, 0.66)},
        "log10 loss",
        None,
        False,
        (7, 4.5),
        40,
    )
    ax = fig.axes[0]
    assert legend_texts(ax) == ["AdaPEFT (head+embed)", "LoRA", "BitFit"]
    assert not ax.texts  # annotate=False: no numbers
    shapes = {c.get_label(): c.get_paths()[0].vertices.round(6).tobytes() for c in ax.collections}
    assert len(set(shapes.values())) == 2  # the recipes have different marker shapes


def test_crowded_frontier_labels_do_not_overlap():
    # six groups of nearly equal size: their point numbers would sit on top of each other
    groups = ["lora_A", "lora_B", "head", "norm", "bias", "embed"]
    points = [(0.0, 0.0, ())] + [(0.010 + 0.0004 * k, 1.0 + 0.01 * k, tuple(groups[: k + 1])) for k in range(6)]
    fig = plots.frontier._frontier_figure(points, None, "y", None, True, (7, 4.5), 100)
    ax = fig.axes[0]
    renderer = fig.canvas.get_renderer()
    boxes = [t.get_window_extent(renderer) for t in ax.texts]
    assert [t.get_text() for t in ax.texts] == ["1", "2", "3", "4", "5", "6"]
    for i in range(len(boxes)):
        for j in range(i):
            assert not boxes[i].overlaps(boxes[j]), (ax.texts[i].get_text(), ax.texts[j].get_text())
    assert legend_texts(ax)[1:] == [
        "1  lora_A",
        "2  +lora_B",
        "3  +head",
        "4  +norm",
        "5  +bias",
        "6  +embed",
    ]


def test_plot_errors(tmp_path):
    with pytest.raises(ValueError, match="no probe record"):
        plot_ppi_heatmap([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no probe record"):
        plot_appi_curves([], tmp_path / "x.png")
    with pytest.raises(ValueError, match="fraction > 0"):
        plot_frontier([FrontierPoint(0.0, 0.0, ())], tmp_path / "x.png")
    with pytest.raises(TypeError, match="must have .fraction and .value"):
        plot_frontier([object()], tmp_path / "x.png")
    with pytest.raises(TypeError, match=r"recipe 'LoRA' must map to \(fraction, y\)"):
        plot_frontier(FRONTIER, tmp_path / "x.png", recipes={"LoRA": 0.3})
    with pytest.raises(ValueError, match=r"unsupported suffix '\.xyz'"):
        plot_frontier(FRONTIER, tmp_path / "x.xyz")
    assert not (tmp_path / "x.png").exists()


@pytest.mark.parametrize(
    "draw",
    [
        lambda p: plot_ppi_heatmap([rec(0, "a", 1.0)], p),
        lambda p: plot_appi_curves([rec(0, "a", 1.0)], p),
        lambda p: plot_frontier(FRONTIER, p),
    ],
    ids=["heatmap", "appi", "frontier"],
)
def test_missing_matplotlib_gives_pip_hint(draw, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    hint = r"plotting needs matplotlib: pip install 'adapeft-optim\[plot\]'"
    with pytest.raises(ImportError, match=hint):
        draw(tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def test_processing_works_without_matplotlib(monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    _, _, m = heatmap_values(table_history(TABLE, STEPS), alpha=0.5)
    assert m.shape == (3, 5)


def test_plotting_leaves_matplotlib_global_state_alone(tmp_path):
    import matplotlib

    pyplot_loaded = "matplotlib.pyplot" in sys.modules
    # RcParams.copy reads raw values: it neither resolves nor changes the backend
    before = matplotlib.rcParams.copy()
    history = table_history(TABLE, STEPS)
    plot_ppi_heatmap(history, tmp_path / "a.png", dpi=30)
    plot_appi_curves(history, tmp_path / "b.png", dpi=30)
    plot_frontier(FRONTIER, tmp_path / "c.png", dpi=30)
    after = matplotlib.rcParams.copy()
    assert dict.__getitem__(after, "backend") is dict.__getitem__(before, "backend")
    assert dict(after) == dict(before)
    assert ("matplotlib.pyplot" in sys.modules) == pyplot_loaded


def test_heatmap_without_accepted_probe_and_other_formats(tmp_path):
    history = table_history({"others": [None, None], "head": [None, None]}, steps=[0, 8])
    fig = plots.heatmap._heatmap_figure(history, "others", 3.0, 0.9, None, None, "viridis", None, 40)
    assert [t.get_text() for t in fig.axes[0].texts] == ["no valued probe"]
    assert_not_blank(read_png(plot_ppi_heatmap(history, tmp_path / "empty.png", dpi=40)))
    out = plot_appi_curves(table_history(TABLE, STEPS), tmp_path / "appi.svg")
    assert out.read_bytes().lstrip().startswith(b"<?xml")
