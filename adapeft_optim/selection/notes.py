"""Plain-language remarks on a selection, above all why it is empty.

A selection is never empty silently: when nothing fits the budget,
:func:`~adapeft_optim.selection.select_groups` returns the empty selection with an
:class:`EmptySelectionWarning` naming the smallest budget that selects something and what
it selects (:func:`_empty_note`), and :attr:`Selection.notes` (:func:`_notes`) repeats it,
along with the groups no accepted probe measured and the groups selected only because another
requires them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from .knapsack import _eligible, _knapsack, _smallest_weight, _solve

if TYPE_CHECKING:
    from .result import Selection


class EmptySelectionWarning(UserWarning):
    """No group fits the budget: the returned selection is empty.

    The message names the smallest budget that selects something and what it selects, as
    does :attr:`Selection.notes`. ``warnings.simplefilter("error", EmptySelectionWarning)``
    turns it into an exception.
    """


# Pickles and reprs name the package, as before it was split into modules.
EmptySelectionWarning.__module__ = "adapeft_optim.selection"


def _nothing_selectable(appi: Mapping[str, float], requires: Mapping[str, Any]) -> str:
    positive = [g for g, a in appi.items() if _eligible(a)]
    return (
        f"no group can be selected at any budget: every group with a positive APPI "
        f"({positive}) requires groups of infinite APPI or of a negative value at least as "
        f"large (requires={dict(requires)}); fix the APPI table or the requires mapping"
    )


def _empty_note(selection: Selection) -> str:
    """Why ``selection`` (of a solver) is empty and the smallest budget that is not."""
    ks = _knapsack(selection.appi, selection.numel, selection.requires)
    weight = _smallest_weight(ks, selection.method)
    if weight is None:
        return _nothing_selectable(selection.appi, selection.requires)
    fits = _solve(ks, weight, selection.method)
    note = (
        f"no group fits budget={selection.budget!r} (method={selection.method!r}), so the "
        f"selection is empty; the smallest budget that selects something is "
        f"{weight / ks.total!r} ({'+'.join(fits)}: {weight:,} of {ks.total:,} parameters): "
        f"raise the budget to at least that"
    )
    if selection.unprobed:
        note += f"; groups with APPI 0 (no accepted probe) were not considered: {list(selection.unprobed)}"
    return note


def _notes(selection: Selection) -> tuple[str, ...]:
    """:attr:`Selection.notes`: unprobed groups, groups selected only because another
    requires them, and, for an empty selection of a solver, the smallest budget that
    selects something."""
    notes = []
    if selection.unprobed:
        notes.append(
            f"APPI 0 (no accepted probe) for {list(selection.unprobed)}: never selected for "
            f"their own sake; run more steps (or lower r2_min) to measure them"
        )
    for g in selection.groups:
        if g in selection.requires:
            notes.append(f"{g!r} is selected together with {list(selection.requires[g])}: it cannot learn without them")
    if not selection.groups and selection.method != "manual":
        if any(_eligible(a) for a in selection.appi.values()):
            notes.append(_empty_note(selection))
    return tuple(notes)
