"""Text reports of a probed optimizer, for the demo and the command line: the APPI table, what
the probes of each group came to, a warning line when APPI ranks rest on too few probes, the
selection at a budget or why it is empty, plain-text tables and JSON-safe values.

Torch only (no transformers, no matplotlib): :mod:`adapeft_optim.cli` and
:mod:`adapeft_optim.demo` both print with it.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Any

from .selection import EmptySelectionWarning, pareto_frontier

__all__ = [
    "MIN_VALUED_PROBES",
    "FewProbesWarning",
    "appi_table",
    "few_probes_message",
    "format_probe_summary",
    "format_table",
    "json_safe",
    "pct",
    "num",
    "probe_summary",
    "select_or_explain",
]

# APPI is a sum over probes; with fewer valued probes than this a group's rank rests on one or
# two line fits, each on a single batch.
MIN_VALUED_PROBES = 3


class FewProbesWarning(UserWarning):
    """Some groups have too few valued probes for their APPI rank to mean much."""


# -- plain text and JSON ------------------------------------------------------------------------


def json_safe(obj: Any) -> Any:
    """``obj`` with tuples as lists, numpy/torch scalars as Python numbers and non-finite floats
    as ``None``, so ``json.dumps(..., allow_nan=False)`` accepts it."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalar
        return json_safe(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A plain-text table: a header line, a rule, one line per row.

    ``align`` holds one character per column, ``"l"`` or ``"r"`` (default: first column left,
    the others right).
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)
    lines = []
    for j, row in enumerate(cells):
        parts = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align, strict=True)]
        lines.append("  ".join(parts).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def pct(fraction: float) -> str:
    """``fraction`` as a percentage with two decimals, e.g. ``"10.27%"``."""
    return f"{100 * fraction:.2f}%"


def num(x: float, digits: int = 4) -> str:
    """``x`` to ``digits`` significant digits, ``"nan"`` when not finite."""
    return f"{x:.{digits}g}" if math.isfinite(x) else "nan"


# -- a probed optimizer ------------------------------------------------------------------------


def appi_table(opt) -> list[dict]:
    """One row per group of a probed :class:`GeNAdaPEFT`, in greedy order (then unranked
    groups by name): numel, fraction, APPI, value (APPI x numel, the predicted loss reduction),
    effective lr, probes run, valued (counted in APPI) and accepted (lr fit used), and greedy
    rank (``None`` for groups with no positive APPI)."""
    appi, numel, lrs = opt.appi, opt.numel, opt.lrs
    total = sum(numel.values())
    rank = {g: i + 1 for i, g in enumerate(pareto_frontier(appi, numel, method="greedy")[-1].groups)}
    counts = {row["group"]: row for row in probe_summary(opt.history)}
    empty = {"probes": 0, "valued": 0, "accepted": 0}
    return [
        {
            "group": g,
            "numel": numel[g],
            "fraction": numel[g] / total,
            "appi": appi[g],
            "value": appi[g] * numel[g],
            "lr": lrs[g],
            "probes": counts.get(g, empty)["probes"],
            "valued": counts.get(g, empty)["valued"],
            "accepted": counts.get(g, empty)["accepted"],
            "rank": rank.get(g),
        }
        for g in sorted(appi, key=lambda g: (rank.get(g, len(appi) + 1), g))
    ]


def probe_summary(history: Iterable[dict], groups: Iterable[str] = ()) -> list[dict]:
    """What the probes of each group came to, from ``opt.history``.

    A probe is *valued* when its line was a parabola with finite losses (``case`` is not
    ``None``): its PPI counts in APPI. It is *accepted* when its lr fit was used as well.

    Args:
        history: the optimizer's probe records.
        groups: groups to list even without a record, first and in this order; the others
            follow in order of first appearance (default: none)

    Returns:
        list[dict]: per group ``group``, ``probes``, ``valued``, ``accepted``, ``cases``
        (case -> count, valued probes) and ``reasons`` (reason -> count, probes not
        accepted), the counters as plain dicts, most frequent first.
    """

    def empty(g: str) -> dict:
        return {"group": g, "probes": 0, "valued": 0, "accepted": 0, "cases": Counter(), "reasons": Counter()}

    rows = {g: empty(g) for g in groups}
    for record in history:
        g = record["group"]
        if g not in rows:
            rows[g] = empty(g)
        row = rows[g]
        row["probes"] += 1
        if record.get("case") is not None:
            row["valued"] += 1
            row["cases"][record["case"]] += 1
        if record["accepted"]:
            row["accepted"] += 1
        else:
            row["reasons"][str(record.get("reason"))] += 1
    return [
        row | {"cases": dict(row["cases"].most_common()), "reasons": dict(row["reasons"].most_common())}
        for row in rows.values()
    ]


def format_probe_summary(rows: Sequence[dict]) -> str:
    """:func:`probe_summary` as a table: valued/probes, accepted/probes, why not accepted."""
    return format_table(
        ["group", "valued", "accepted", "not accepted because"],
        [
            [
                r["group"],
                f"{r['valued']}/{r['probes']}",
                f"{r['accepted']}/{r['probes']}",
                ", ".join(f"{reason} x{n}" for reason, n in r["reasons"].items()) or "-",
            ]
            for r in rows
        ],
        "lrrl",
    )


def few_probes_message(rows: Sequence[dict], fix: str, minimum: int = MIN_VALUED_PROBES) -> str | None:
    """One line naming the groups with fewer than ``minimum`` valued probes, or ``None``.

    Args:
        rows: :func:`probe_summary` rows.
        fix: what to do about it, e.g. ``"run more --steps"``.
        minimum: valued probes a rank needs (default: :data:`MIN_VALUED_PROBES`)
    """
    few = [r for r in rows if r["valued"] < minimum]
    if not few:
        return None
    listed = ", ".join(f"{r['group']} {r['valued']}/{r['probes']}" for r in few)
    unranked = [r["group"] for r in few if r["valued"] == 0]
    tail = (
        f"; {', '.join(unranked)} had no valued probe, so APPI 0 ranks them last for want of "
        "a measurement, not for lack of influence"
        if unranked
        else ""
    )
    return f"APPI ranks rest on fewer than {minimum} valued probes for {listed} (valued/probes){tail}: {fix}"


def select_or_explain(opt: Any, budget: float, method: str) -> tuple[Any, str | None]:
    """``opt.select(budget, method)`` and, when it is empty, why and the smallest budget that
    is not (the :class:`~adapeft_optim.selection.EmptySelectionWarning`'s text, which the
    caller turns into its error instead of a warning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmptySelectionWarning)
        selection = opt.select(budget, method=method)
    empty = [str(w.message) for w in caught if issubclass(w.category, EmptySelectionWarning)]
    for w in caught:  # anything else goes on as it came
        if not issubclass(w.category, EmptySelectionWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if selection.groups:
        return selection, None
    return selection, empty[0] if empty else "no group has a positive APPI"
