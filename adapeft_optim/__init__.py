"""AdaPEFT on GeN: per-group Newton learning rates, parameter influence (APPI) and
Pareto-optimal parameter-subset selection, as a drop-in wrapper of a torch.optim optimizer."""

# Names are imported on first use (PEP 562), so that `import adapeft_optim` and
# `adapeft --help` do not pay for torch and transformers (seconds) before they are needed.

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> submodule that defines it
_EXPORTS = {
    "GROUP_NAMES": "grouping",
    "describe_groups": "grouping",
    "group_parameters": "grouping",
    "GeNAdaPEFTFactory": "integrations",
    "replay_closure": "integrations",
    "unwrap_optimizer": "integrations",
    "GeNAdaPEFT": "optimizer",
    "EmptySelectionWarning": "selection",
    "Selection": "selection",
    "apply_selection": "selection",
    "group_dependencies": "selection",
    "load_selected": "selection",
    "pareto_frontier": "selection",
    "save_selected": "selection",
    "select_groups": "selection",
    "transfer_selection": "selection",
}
_SUBMODULES = frozenset({"cli", "demo", "fit", "grouping", "integrations", "optimizer", "plots", "selection", "task"})

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

if TYPE_CHECKING:
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


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(f".{module}", __name__), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__) | _SUBMODULES)
