"""The wrapper's state, kept in the inner optimizer's param groups (so torch's tools carry it)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import TYPE_CHECKING, Any

import torch

from .inner import _lr_value

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
    "curvature": 0.0,  # A per unit lr² of its last accepted fit, reused between measurements (0: none)
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


def init_state(param_groups: list[dict]) -> None:
    """Every ``adapeft_*`` value at its start (Note [State in the param groups])."""
    for g in param_groups:
        g.update({f"adapeft_{k}": v for k, v in _GROUP_START.items()})
        g.update({f"adapeft_{k}": v for k, v in _SHARED_START.items()})


class _GroupStats(MutableMapping):
    """A named group's ``adapeft_*`` values, read from its first param group, written to all."""

    __slots__ = ("_groups",)
    _KEYS = ("factor", "spacing", "appi", "probes", "accepted", "valued", "interval", "due", "curvature")

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


def split_param_groups(inner_groups: list[dict], groups: Mapping[str, Iterable[torch.Tensor]] | None) -> None:
    """Split each inner param group by named group, in place (the list object stays), adding
    ``adapeft_name`` and ``adapeft_base_lr``; errors name the parameter and the fix."""
    if any("adapeft_name" in g for g in inner_groups):
        raise ValueError("the optimizer's param groups already carry adapeft_name: it was wrapped before")
    if groups is None:
        groups = {str(g.get("name", f"group{i}")): g["params"] for i, g in enumerate(inner_groups)}
    if not isinstance(groups, Mapping):
        raise TypeError(
            f"groups must map a name to parameters (e.g. group_parameters(model)), got {type(groups).__name__}"
        )
    owner = _owners(groups)
    _check_coverage(inner_groups, groups, owner)
    order = list(groups.keys())
    split = []
    for g in inner_groups:
        rest = {k: v for k, v in g.items() if k not in ("params", "param_names")}
        for name in order:
            keep = [i for i, p in enumerate(g["params"]) if owner[id(p)] == name]
            if keep:
                part = {
                    **rest,
                    "params": [g["params"][i] for i in keep],
                    "adapeft_name": name,
                    "adapeft_base_lr": _lr_value(g),
                }
                if "param_names" in g:  # optimizers built from named_parameters()
                    part["param_names"] = [g["param_names"][i] for i in keep]
                split.append(part)
    # In place: references to the list (an LR scheduler made later, Accelerate) stay valid.
    inner_groups[:] = split


def _owners(groups: Mapping[str, Any]) -> dict[int, str]:
    """id(parameter) -> its group's name, checking every parameter is in one group once."""
    owner: dict[int, str] = {}
    for name, params in groups.items():
        if not isinstance(name, str):
            raise TypeError(f"group names must be str, got {name!r}")
        params = [params] if torch.is_tensor(params) else list(params)
        if not params:
            raise ValueError(f"group {name!r} is empty; drop it from groups")
        for i, p in enumerate(params):
            if not torch.is_tensor(p):
                raise TypeError(f"group {name!r} item {i} is a {type(p).__name__}, not a parameter tensor")
            if id(p) in owner:
                where = "twice" if owner[id(p)] == name else f"also in group {owner[id(p)]!r}"
                raise ValueError(
                    f"parameter {i} of group {name!r} (shape {tuple(p.shape)}) is {where}; "
                    "every parameter must be in exactly one group"
                )
            owner[id(p)] = name
    return owner


def _check_coverage(inner_groups: list[dict], groups: Mapping[str, Any], owner: dict[int, str]) -> None:
    """Every grouped parameter is in the optimizer, and every optimizer parameter in a group."""
    in_optimizer = {id(p) for g in inner_groups for p in g["params"]}
    missing = [
        (n, i, p)
        for n, ps in groups.items()
        for i, p in enumerate(ps if not torch.is_tensor(ps) else [ps])
        if id(p) not in in_optimizer
    ]
    if missing:
        n, i, p = missing[0]
        raise ValueError(
            f"parameter {i} of group {n!r} (shape {tuple(p.shape)}) is not in the optimizer "
            f"({len(missing)} such); pass the same parameters to the optimizer and to groups"
        )
    ungrouped = [(j, i, p) for j, g in enumerate(inner_groups) for i, p in enumerate(g["params"]) if id(p) not in owner]
    if ungrouped:
        j, i, p = ungrouped[0]
        hint = (
            "it is frozen: build the optimizer from the trainable parameters only "
            "([p for p in model.parameters() if p.requires_grad]) or group with "
            "group_parameters(model, include_frozen=True)"
            if all(not q.requires_grad for _, _, q in ungrouped)
            else "add it to a group, e.g. with group_parameters(model)"
        )
        raise ValueError(
            f"parameter {i} of the optimizer's param group {j} (shape {tuple(p.shape)}) is in no group "
            f"({len(ungrouped)} such); {hint}"
        )


def validate_state_dict(state_dict: Any, own_names: list[str]) -> None:
    """Check the ``adapeft_*`` values of a state dict against this optimizer, or raise a
    ``ValueError`` naming the key and the fix."""
    groups = state_dict.get("param_groups") if isinstance(state_dict, Mapping) else None
    if not isinstance(groups, (list, tuple)) or any(not isinstance(g, Mapping) for g in groups):
        raise ValueError("state_dict has no list of param_groups; save it with opt.state_dict()")
    names = [g.get("adapeft_name") for g in groups]
    if names != own_names:
        if not any(names):
            raise ValueError(
                "state_dict's param groups have no adapeft_name: it is not from GeNAdaPEFT.state_dict(); "
                "load an inner optimizer's state into the inner optimizer before wrapping it"
            )
        raise ValueError(
            f"state_dict is for groups {names}, this optimizer has {own_names}; build it with the same groups"
        )
    for i, g in enumerate(groups):
        missing = [f"adapeft_{k}" for k in (*_GROUP_START, *_SHARED_START) if f"adapeft_{k}" not in g]
        if missing:
            raise ValueError(f"state_dict['param_groups'][{i}] lacks {missing}; save it with opt.state_dict()")
        for key, low in (("factor", 0.0), ("spacing", 1.0), ("appi", 0.0), ("curvature", 0.0)):
            value = g[f"adapeft_{key}"]
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not ok or value < low or (key == "factor" and value == 0.0):
                bound = "> 0" if key == "factor" else f">= {low:g}"
                raise ValueError(
                    f"state_dict['param_groups'][{i}]['adapeft_{key}'] = {value!r}: must be a finite number {bound}"
                )
        for key, low in (("step", 0), ("interval", 1), ("due", 0)):
            value = g[f"adapeft_{key}"]
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(
                    f"state_dict['param_groups'][{i}]['adapeft_{key}'] must be an int >= {low}, got {value!r}"
                )
        mask = g["adapeft_mask"]
        if mask is not None and (isinstance(mask, str) or any(n not in names for n in mask)):
            raise ValueError(
                f"state_dict['param_groups'][{i}]['adapeft_mask'] = {mask!r} names unknown "
                f"groups; the groups are {list(dict.fromkeys(names))}"
            )
