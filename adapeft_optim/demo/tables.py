"""The demo's printed tables: APPI after the warm-up, the greedy frontier and the comparison of
the recipes on the large model (the table printer itself is :mod:`adapeft_optim.report`)."""

from __future__ import annotations

from collections.abc import Sequence

from ..report import format_table, num, pct

__all__ = ["appi_text", "comparison_text", "frontier_text"]


def appi_text(rows: Sequence[dict]) -> str:
    """:func:`~adapeft_optim.report.appi_table` rows as a table: rank, group, params, APPI,
    value, Newton lr, valued/probes."""
    return format_table(
        ["rank", "group", "params", "% params", "APPI", "value", "Newton lr", "valued"],
        [
            [
                r["rank"] or "-",
                r["group"],
                f"{r['numel']:,}",
                pct(r["fraction"]),
                num(r["appi"]),
                num(r["value"]),
                num(r["lr"], 3),
                f"{r['valued']}/{r['probes']}",
            ]
            for r in rows
        ],
        "rlrrrrrr",
    )


def frontier_text(frontier: Sequence, frontier_exact: Sequence) -> str:
    """The greedy frontier, one nested prefix per line, with whether it is on the exact one."""
    exact_sets = {frozenset(p.groups) for p in frontier_exact}
    return format_table(
        ["k", "groups", "% params", "predicted value", "exact"],
        [
            [
                k,
                "+".join(p.groups) or "(none)",
                pct(p.fraction),
                num(p.value),
                "yes" if frozenset(p.groups) in exact_sets else "no",
            ]
            for k, p in enumerate(frontier)
        ],
        "rlrrr",
    )


def comparison_text(comparison: Sequence[dict], before: dict) -> str:
    """The recipes trained on the large model, and a last row for the model before
    fine-tuning (``before``: its :func:`~adapeft_optim.demo.training.evaluate` result)."""
    rows = [
        [
            c["name"],
            "+".join(c["groups"]),
            f"{c['trainable']:,}",
            pct(c["fraction"]),
            f"{c['loss']:.4f}",
            f"{c['accuracy']:.3f}",
            f"{c['lr']:g}",
        ]
        for c in comparison
    ]
    untrained = ["(pre-trained, no fine-tuning)", "-", "0", pct(0.0), f"{before['loss']:.4f}"]
    rows.append([*untrained, f"{before['accuracy']:.3f}", "-"])
    return format_table(
        ["recipe", "groups", "trainable", "% trainable", "eval loss", "accuracy", "lr"],
        rows,
        "llrrrrr",
    )
