"""Argument checks shared by the solvers, :class:`~adapeft_optim.selection.Selection` and
the transfer: budgets, methods, group names, APPI tables and ``requires`` mappings.

Every check returns a clean copy (plain ``float``, ``int``, ``str``, tuples) or raises a
``TypeError`` / ``ValueError`` that says what to pass instead.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable, Mapping
from typing import Any

SELECTION_METHODS = ("greedy", "prefix", "exact")


def _check_budget(budget: Any) -> float:
    if isinstance(budget, bool) or not hasattr(type(budget), "__float__") or isinstance(budget, (str, bytes)):
        raise TypeError(
            f"budget must be a number in [0, 1] (a fraction of all parameters, e.g. 0.01 "
            f"for 1%), got {type(budget).__name__} {budget!r}"
        )
    value = float(budget)
    if not 0.0 <= value <= 1.0:  # NaN fails this too
        raise ValueError(f"Invalid budget: {budget!r}; it is a fraction of all parameters in [0, 1] (e.g. 0.01 for 1%)")
    return value


def _check_method(method: Any, allowed: tuple[str, ...] = SELECTION_METHODS) -> str:
    if not isinstance(method, str) or method not in allowed:
        raise ValueError(f"Unknown method {method!r}; use one of {', '.join(repr(m) for m in allowed)}")
    return method


def _check_name(name: Any, what: str) -> str:
    if not isinstance(name, str):
        raise TypeError(f"group names in {what} must be str, got {type(name).__name__} {name!r}")
    return name


def _check_numel(name: str, n: Any) -> int:
    if isinstance(n, bool):
        raise TypeError(f"numel of group {name!r} must be an int, got bool {n!r}")
    try:
        count = operator.index(n)
    except TypeError:
        raise TypeError(
            f"numel of group {name!r} must be an int (a parameter count), got {type(n).__name__} {n!r}"
        ) from None
    if count <= 0:
        raise ValueError(
            f"numel of group {name!r} must be a positive parameter count, got {count}; "
            f"drop empty groups before selecting"
        )
    return count


def _check_appi(name: str, a: Any) -> float:
    if isinstance(a, (bool, str, bytes)) or not hasattr(type(a), "__float__"):
        raise TypeError(f"APPI of group {name!r} must be a real number, got {type(a).__name__} {a!r}")
    value = float(a)
    if math.isnan(value):
        raise ValueError(
            f"APPI of group {name!r} is NaN; APPI sums accepted probes only and is never "
            f"NaN, so this table is corrupted: fix or drop the entry for {name!r}"
        )
    return value


def _check_mapping(arg: Any, label: str) -> None:
    if not isinstance(arg, Mapping):
        raise TypeError(f"{label} must be a mapping group name -> number (e.g. opt.{label}), got {type(arg).__name__}")


def _check_table(appi: Any, numel: Any) -> tuple[dict[str, float], dict[str, int]]:
    """Validated copies of an APPI table and its parameter counts, in ``appi``'s order."""
    for arg, label in ((appi, "appi"), (numel, "numel")):
        _check_mapping(arg, label)
    if len(appi) == 0:
        raise ValueError("appi is empty: there are no parameter groups to select from")
    names = [_check_name(k, "appi") for k in appi]
    for k in numel:
        _check_name(k, "numel")
    if set(names) != set(numel):
        only_appi = [k for k in names if k not in numel]
        only_numel = [k for k in numel if k not in appi]
        raise ValueError(
            f"appi and numel must have the same group names; only in appi: {only_appi}, only in numel: {only_numel}"
        )
    clean_numel = {k: _check_numel(k, numel[k]) for k in names}
    clean_appi = {k: _check_appi(k, appi[k]) for k in names}
    return clean_appi, clean_numel


def _check_required(group: Any, needed: Any, known: list[str], known_set: set[str]) -> tuple[str, ...]:
    """The groups ``requires[group]`` names, validated, without repeats or ``group`` itself."""
    _check_name(group, "requires")
    if isinstance(needed, (str, bytes)) or not isinstance(needed, Iterable):
        raise TypeError(
            f"requires[{group!r}] must be a sequence of group names, got "
            f"{type(needed).__name__} {needed!r}; write ({needed!r},) for one group"
        )
    needed = tuple(dict.fromkeys(_check_name(n, "requires") for n in needed))
    unknown = [n for n in (group, *needed) if n not in known_set]
    if unknown:
        raise ValueError(
            f"requires names group(s) {unknown} that are not candidate groups {known}; "
            f"compute it from the same groups (group_dependencies(groups)) or drop "
            f"those entries"
        )
    return tuple(n for n in needed if n != group)


def _check_requires(requires: Any, names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Validated ``requires``: only groups that require others, in table order."""
    if requires is None:
        return {}
    if not isinstance(requires, Mapping):
        raise TypeError(
            f"requires must be a mapping group name -> names of the groups it cannot learn "
            f"without (e.g. group_dependencies(groups)), got {type(requires).__name__}"
        )
    known = list(names)
    known_set = set(known)
    clean: dict[str, tuple[str, ...]] = {}
    for group, needed in requires.items():
        needed = _check_required(group, needed, known, known_set)
        if needed:
            clean[group] = needed
    return {g: clean[g] for g in known if g in clean}
