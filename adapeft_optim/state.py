"""The wrapper's state, kept in the inner optimizer's param groups (so torch's tools carry it)."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .optimizer import GeNAdaPEFT

# Note [State in the param groups]
# ~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
# Everything the wrapper must carry across a checkpoint lives in the inner optimizer's param
# groups under adapeft_ keys, as schedule_free and timm's Lookahead keep theirs: per named group
# (its lr factor newton_lr/base_lr, probe spacing, APPI, counts, what it requires) in each of its
# param groups, and the optimizer's counters (step, probe batches drawn, recent probe losses,
# mask, selection, ...) in every param group alike. So state_dict() is the inner optimizer's own
# format, and torch.distributed.checkpoint, deepcopy, pickle and the state-dict hooks need no
# special entry. Values are replaced, never mutated in place (a state_dict() shares them).
# The probe history is a bounded log (history_size records), not state.

_GROUP_START = {
    "factor": 1.0,
    "spacing": 1.0,
    "appi": 0.0,
    "probes": 0,
    "accepted": 0,
    "valued": 0,
    "requires": (),
    "interval": 1,  # probe steps the group's next probe stands for (Note [Settled groups])
    "due": 0,  # the probe step (step // lazy) at which it is next probed
}
_SHARED_START = {
    "step": 0,
    "probe_count": 0,
    "recent_l0": (),
    "mask": None,
    "ranking": None,
    "stable_count": 0,
    "budget": None,
    "selection": None,
}


class _GroupStats(MutableMapping):
    """A named group's ``adapeft_*`` values, read from its first param group, written to all."""

    __slots__ = ("_groups",)
    _KEYS = ("factor", "spacing", "appi", "probes", "accepted", "valued", "interval", "due")

    def __init__(self, groups: list[dict]) -> None:
        self._groups = groups

    def __getitem__(self, key: str) -> Any:
        if key not in self._KEYS:
            raise KeyError(key)
        return self._groups[0][f"adapeft_{key}"]

    def __setitem__(self, key: str, value: Any) -> None:
        if key not in self._KEYS:
            raise KeyError(key)
        for g in self._groups:
            g[f"adapeft_{key}"] = value

    def __delitem__(self, key: str) -> None:
        raise TypeError("the wrapper's per-group values cannot be deleted")

    def __iter__(self) -> Iterator[str]:
        return iter(self._KEYS)

    def __len__(self) -> int:
        return len(self._KEYS)

    def __repr__(self) -> str:
        return repr(dict(self))


def _shared(key: str, doc: str) -> property:
    """A wrapper value kept alike in every param group (Note [State in the param groups])."""

    def get(self: GeNAdaPEFT) -> Any:
        return self.param_groups[0][f"adapeft_{key}"]

    def set_(self: GeNAdaPEFT, value: Any) -> None:
        for g in self.param_groups:
            g[f"adapeft_{key}"] = value

    return property(get, set_, doc=doc)
