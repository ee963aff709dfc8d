"""AdaPEFT on GeN: per-group Newton learning rates, parameter influence (APPI) and
Pareto-optimal parameter-subset selection, as a drop-in wrapper of a torch.optim optimizer.

The core (this namespace) needs torch and numpy. The applications import what they need
from their own modules: :mod:`adapeft_optim.integrations.hf` (transformers),
:mod:`adapeft_optim.cli`, :mod:`adapeft_optim.demo`, :mod:`adapeft_optim.plots` (the ``hf``
and ``plots`` extras).
"""

from .grouping import GROUP_NAMES, describe_groups, group_parameters
from .integrations import GeNAdaPEFTFactory, replay_closure, unwrap_optimizer
from .optimizer import GeNAdaPEFT
from .selection import (
    EmptySelectionWarning,
    Selection,
    apply_selection,
    group_dependencies,
    load_selected,
    pareto_frontier,
    save_selected,
    select_groups,
    transfer_selection,
)

__version__ = "0.1.0"

__all__ = [
    "EmptySelectionWarning",
    "GROUP_NAMES",
    "GeNAdaPEFT",
    "GeNAdaPEFTFactory",
    "Selection",
    "apply_selection",
    "describe_groups",
    "group_dependencies",
    "group_parameters",
    "load_selected",
    "pareto_frontier",
    "replay_closure",
    "save_selected",
    "select_groups",
    "transfer_selection",
    "unwrap_optimizer",
    "__version__",
]
