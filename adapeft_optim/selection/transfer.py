"""Algorithm 2's transfer, re-solved: the source's APPI on the target's group sizes.

APPI is an influence per parameter, measured on a small (source) model. :func:`transfer_selection`
gives each group of a larger (target) model the source's APPI of the same name, across
granularities by role (:func:`_transferred_appi`), and solves the knapsack again with the
target's parameter counts (:func:`_target_table`). :func:`~adapeft_optim.selection.apply_selection`,
by contrast, applies the source's group names as they are.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from .dependencies import group_dependencies
from .knapsack import _eligible
from .result import Selection
from .solve import _select
from .validation import (
    _check_appi,
    _check_budget,
    _check_mapping,
    _check_method,
    _check_name,
    _check_requires,
    _check_table,
)

if TYPE_CHECKING:
    from torch import nn


# -- the target's table ----------------------------------------------------------------------------


def _target_table(
    target: Any, source_names: Iterable[str], granularity: str | None
) -> tuple[dict[str, int], dict[str, list[Any]] | None]:
    """(numel per group, the groups when ``target`` has tensors) of a transfer target."""
    from torch import nn

    from ..grouping import base_name, group_parameters

    if isinstance(target, nn.Module):
        if granularity is None:
            granularity = "block" if any(base_name(n) != n for n in source_names) else "type"
        groups = group_parameters(target, granularity=granularity, include_frozen=True)
    elif isinstance(target, Mapping):
        if _is_count_table(target, granularity):
            return dict(target), None
        groups = _listed_groups(target)
    else:
        raise TypeError(
            f"target must be a model, a mapping group -> parameters (group_parameters) or a "
            f"mapping group -> parameter count (opt.numel), got {type(target).__name__}"
        )
    _check_tensors(groups)
    numel = {name: sum(int(p.numel()) for p in params) for name, params in groups.items()}
    return numel, groups


def _is_count_table(target: Mapping[str, Any], granularity: str | None) -> bool:
    """Whether a mapping target holds parameter counts (else it holds parameters)."""
    if granularity is not None:
        raise ValueError(
            "granularity= groups a model; the target is already a table (pass the model itself to group it)"
        )
    if len(target) == 0:
        raise ValueError("the target table is empty: there are no groups to select from")
    counts = [not isinstance(v, bool) and hasattr(type(v), "__index__") for v in target.values()]
    if all(counts):
        return True
    if any(counts):
        raise TypeError(
            "target must map every group to a parameter count (numel) or every group to "
            "its parameters (groups), not a mix"
        )
    return False


def _listed_groups(target: Mapping[str, Any]) -> dict[str, list[Any]]:
    """A mapping target group -> parameters, with each group's parameters as a list."""
    groups = {}
    for name, params in target.items():
        if isinstance(params, (str, bytes)) or not isinstance(params, Iterable):
            raise TypeError(
                f"target[{_check_name(name, 'target')!r}] must be a parameter count or a "
                f"list of parameters, got {type(params).__name__} {params!r}"
            )
        groups[name] = list(params)
    return groups


def _check_tensors(groups: Mapping[str, list[Any]]) -> None:
    import torch

    for name, params in groups.items():
        for p in params:
            if not isinstance(p, torch.Tensor):
                raise TypeError(
                    f"target[{name!r}] holds a {type(p).__name__}, not a tensor; pass "
                    f"group_parameters(model) or a mapping group -> parameter count"
                )


# -- the source's APPI on the target's groups ------------------------------------------------------


def _transferred_appi(
    target_names: Iterable[str], appi: dict[str, float], numel: dict[str, int] | None
) -> dict[str, float]:
    """The source's per-parameter influence for each target group (0.0: unmeasured)."""
    from ..grouping import base_name

    target_names = list(target_names)
    source_by_block = any(base_name(s) != s for s in appi)
    target_by_block = any(base_name(t) != t for t in target_names)
    transferred = {}
    for name in target_names:
        role = base_name(name)
        if source_by_block and not target_by_block:
            transferred[name] = _block_mean_appi(name, role, appi, numel)
        elif name in appi:
            transferred[name] = appi[name]
        elif not source_by_block and role in appi:
            # A block of a block-level target, the role measured as a whole: same influence.
            transferred[name] = appi[role]
        else:
            # A block the source does not have (a deeper target), a role it never measured.
            transferred[name] = 0.0
    return transferred


def _block_mean_appi(name: str, role: str, appi: dict[str, float], numel: dict[str, int] | None) -> float:
    """The APPI of type-level target group ``name`` from a block-level source."""
    from ..grouping import base_name

    # A type-level group of a block-level source (whose plain "norm" is only the
    # part outside the blocks): the parameter-weighted mean of the role's measured
    # groups is its influence per parameter.
    family = [s for s in appi if base_name(s) == role]
    measured = [s for s in family if appi[s] != 0.0]
    if not measured:
        return 0.0
    if numel is None:
        raise ValueError(
            f"target group {name!r} is split by block in the source ({family[:3]}"
            f"{', ...' if len(family) > 3 else ''}); averaging their APPI per "
            f"parameter needs their sizes: pass the source Selection or "
            f"source_numel=, or group the target with granularity='block'"
        )
    if not all(math.isfinite(appi[s]) for s in measured):
        return math.inf  # undefined: never selected
    weighted = sum((Fraction(appi[s]) * numel[s] for s in measured), Fraction(0))
    return float(weighted / sum(numel[s] for s in measured))


# -- transfer_selection ----------------------------------------------------------------------------


def _source_table(
    source_appi: Selection | Mapping[str, float], source_numel: Mapping[str, int] | None
) -> tuple[dict[str, float], dict[str, int] | None]:
    """The source's validated APPI table and, when known, its parameter counts."""
    if isinstance(source_appi, Selection):
        src_appi = dict(source_appi.appi)
        src_numel = dict(source_appi.numel) if source_numel is None else source_numel
    else:
        _check_mapping(source_appi, "appi")
        src_appi = {_check_name(k, "source_appi"): _check_appi(k, a) for k, a in source_appi.items()}
        src_numel = source_numel
    if src_numel is not None:
        src_appi, src_numel = _check_table(src_appi, src_numel)
    return src_appi, src_numel


def transfer_selection(
    source_appi: Selection | Mapping[str, float],
    target: nn.Module | Mapping[str, Any],
    budget: float,
    method: str = "greedy",
    *,
    requires: Mapping[str, Iterable[str]] | None = None,
    source_numel: Mapping[str, int] | None = None,
    granularity: str | None = None,
) -> Selection:
    """Re-solve the knapsack on a target model with the source's influence per parameter.

    Algorithm 2 measures APPI on a small model and trains a larger one. APPI is an
    influence per parameter, so the target's item ``k`` has value ``APPI_k * n_k(target)``:
    the groups that pay off at a budget can differ from the source's (an embedding is a
    larger share of a small model). :func:`apply_selection` transfers the source's group
    names as they are; this re-solves with the target's sizes.

    A target group takes the source's APPI of the same name, across granularities by
    role: when the source is split by block (``norm@i``, and ``norm`` for the part
    outside the blocks) and the target is not, the target's ``norm`` takes the
    parameter-weighted mean over the source's measured ``norm`` groups; when the target
    is split by block and the source is not, every ``norm@i`` takes the source's
    ``norm``. Any other target group (a block the source does not have, a role it never
    measured) gets APPI 0 and is listed in :attr:`Selection.unprobed`.

    Args:
        source_appi (Selection or Mapping[str, float]): the source's APPI table
            (``opt.appi``), or a Selection made from it (its ``numel`` then serves as
            ``source_numel``).
        target (nn.Module or Mapping): the target model (grouped with
            ``group_parameters(target, include_frozen=True)``, like
            :func:`apply_selection`), its groups (name -> parameters), or its parameter
            counts (name -> numel).
        budget (float): fraction of the target's candidate parameters, in [0, 1].
        method (str): ``"greedy"``, ``"prefix"`` or ``"exact"`` (default: ``"greedy"``)
        requires (Mapping, optional): the target's dependencies (default: ``None``: read
            from the target's tensors with :func:`group_dependencies` when it has tensors
            (a fresh LoRA target's ``lora_A`` requires ``lora_B``), none for a numel
            table; pass ``{}`` for none)
        source_numel (Mapping[str, int], optional): the source's parameter counts, to
            average block-level APPI into a type-level target group (default: ``None``)
        granularity (str, optional): how to group a target model, ``"type"`` or
            ``"block"`` (default: ``None``, ``"block"`` when a source group name has a
            block suffix)

    Returns:
        Selection: over the target's groups, with the transferred APPI table.

    Raises:
        TypeError, ValueError: as :func:`select_groups`; also a malformed target, or no
            target group with a positive transferred APPI (different group names?).

    Warns:
        EmptySelectionWarning: nothing fits ``budget`` on the target.
    """
    budget = _check_budget(budget)
    method = _check_method(method)
    src_appi, src_numel = _source_table(source_appi, source_numel)
    numel, groups = _target_table(target, src_appi, granularity)
    appi = _transferred_appi(numel, src_appi, src_numel)
    clean_appi, clean_numel = _check_table(appi, numel)
    if not any(_eligible(a) for a in clean_appi.values()):
        raise ValueError(
            f"no target group has a positive APPI in the source table: target groups "
            f"{list(clean_numel)}, source groups {list(src_appi)}; group both the same way "
            f"(granularity=) or measure more probes on the source"
        )
    if requires is None and groups is not None:
        requires = group_dependencies(groups)
    clean_requires = _check_requires(requires, clean_appi)
    return _select(clean_appi, clean_numel, budget, method, clean_requires, stacklevel=2)
