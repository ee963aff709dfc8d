"""The demo's figures: the probes' influence, APPI during the warm-up, the predicted frontier
and the comparison of the recipes (matplotlib, imported when they are drawn)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

__all__ = ["write_plots"]


def write_plots(
    out: Path, opt: Any, frontier: list, comparison: list[dict], selection: Any, budget: float
) -> list[str]:
    """The demo's four PNGs in ``out`` (needs matplotlib); their file names."""
    from ..plots import plot_appi_curves, plot_frontier, plot_ppi_heatmap

    plot_ppi_heatmap(
        opt.history,
        out / "ppi_heatmap.png",
        title="influence per probe step (small model, warm-up)",
    )
    plot_appi_curves(opt.history, out / "appi_curves.png", title="APPI during the warm-up (small model)")
    recipes = {c["name"]: (c["small_fraction"], c["predicted_value"]) for c in comparison[1:]}
    plot_frontier(
        {"greedy APPI frontier": frontier},
        out / "frontier.png",
        recipes=recipes,
        budget=budget,
        selection=selection,
        title="predicted loss reduction vs parameters (small model)",
    )

    # log10 of the loss: the good recipes differ by factors near zero, invisible on a linear axis.
    def y(c: dict) -> float:
        return math.log10(max(c["loss"], 1e-12))

    ada = comparison[0]
    chosen = "+".join(ada["groups"])
    if len(chosen) > 30:
        chosen = f"{len(ada['groups'])} groups"
    plot_frontier(
        {f"AdaPEFT ({chosen})": [(ada["fraction"], y(ada), ada["groups"])]},
        out / "comparison.png",
        recipes={c["name"]: (c["fraction"], y(c)) for c in comparison[1:]},
        annotate=False,
        ylabel="log10 eval loss on task B (lower is better)",
        title="large model after fine-tuning: loss vs trainable parameters",
    )
    return ["ppi_heatmap.png", "appi_curves.png", "frontier.png", "comparison.png"]
