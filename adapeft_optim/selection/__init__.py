"""Which parameter groups to train under a parameter budget (design §2, §6; paper §3.2).

Choosing the groups is a 0-1 knapsack (paper eq. 11-13): group k is an item of weight
``n_k`` (its parameter count) and value ``V_k = APPI_k * n_k`` (its predicted loss
reduction), the capacity is ``budget * sum(n_k)``.

- ``method="greedy"``: walk the groups by APPI, the value per parameter, take each one that
  still fits and skip (but go on after) each one that does not. Not always optimal.
- ``method="prefix"``: the paper's nested-prefix reading (§3.2): the same walk, stopping at
  the first group that does not fit. The k-th prefix ``A_k`` answers every budget in
  ``[|A_k| / |w|, |A_{k+1}| / |w|)``.
- ``method="exact"``: the refined Pareto-optimal answer of eq. (4): the best value within
  the budget and, among the subsets with that value, the one with the fewest parameters.

Some groups cannot learn alone: peft initialises ``lora_B`` to zero, so ``lora_A``'s gradient
is exactly zero until ``lora_B`` moves. :func:`group_dependencies` reads that from the
tensors, and every solver takes it as ``requires=``: a group is selected only together with
all the groups it requires (a knapsack with precedence constraints).

A selection is never empty silently: when nothing fits the budget, :func:`select_groups`
returns the empty selection with an :class:`EmptySelectionWarning` naming the smallest
budget that selects something and what it selects. Groups whose APPI is exactly zero (no
accepted probe) are listed in :attr:`Selection.unprobed`.

Everything here works on plain numbers, e.g. a saved APPI table, without an optimizer::

    sel = select_groups({"lora_A": 3.1, "norm": 40.0, "head": 0.2},
                        {"lora_A": 4096, "norm": 512, "head": 8192}, budget=0.4)
    sel.groups                    # ('norm', 'lora_A')
    Selection.from_json(sel.to_json()) == sel
    apply_selection(bigger_model, sel)   # Algorithm 2: transfer by group name
    transfer_selection(sel, bigger_model, budget=0.01)   # re-solve with the target's sizes

and :func:`save_selected` / :func:`load_selected` store only the trained groups.

The modules, one idea each (this package re-exports their public names):

- :mod:`.validation`: argument checks (budget, method, tables, ``requires``).
- :mod:`.knapsack`: the solvers on a validated table (greedy walk, exact Pareto sets), with
  Note [exact arithmetic].
- :mod:`.solve`: :func:`select_groups` and :func:`pareto_frontier`.
- :mod:`.dependencies`: :func:`group_dependencies`.
- :mod:`.result`: the :class:`Selection` record; :mod:`.notes` its remarks and
  :class:`EmptySelectionWarning`; :mod:`.json_format` its JSON form; :mod:`.peft_config` its
  LoRA settings and ``to_peft_config``.
- :mod:`.transfer`: :func:`transfer_selection`.
- :mod:`.apply`: :func:`apply_selection`.
- :mod:`.checkpoint`: :func:`save_selected` and :func:`load_selected`.

Importing this package imports neither torch nor peft; the functions that need them import
them when called.
"""

from __future__ import annotations

from .apply import SelectionLike as SelectionLike  # the type alias, public but not in __all__ (as before)
from .apply import apply_selection
from .checkpoint import load_selected, save_selected
from .dependencies import group_dependencies
from .knapsack import greedy_order
from .notes import EmptySelectionWarning
from .result import Selection
from .solve import FrontierPoint, pareto_frontier, select_groups
from .transfer import transfer_selection
from .validation import SELECTION_METHODS

__all__ = [
    "SELECTION_METHODS",
    "EmptySelectionWarning",
    "FrontierPoint",
    "Selection",
    "apply_selection",
    "greedy_order",
    "group_dependencies",
    "load_selected",
    "pareto_frontier",
    "save_selected",
    "select_groups",
    "transfer_selection",
]
