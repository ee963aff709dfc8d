"""Training a selection: make exactly its groups of a model trainable, by group name.

A selection made on one model applies to any model grouped the same way (Algorithm 2's
transfer to a larger model of the same family): :func:`apply_selection` groups the model,
checks that every selected group is there and trainable (:func:`_resolve`, shared with
:mod:`.checkpoint`) and sets ``requires_grad`` accordingly.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .result import Selection
from .validation import _check_name

if TYPE_CHECKING:
    from torch import nn

SelectionLike = Selection | Iterable[str]


def _selection_names(selection: Any) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(selected names, candidate names) of a Selection or a plain list of names."""
    if isinstance(selection, Selection):
        return selection.groups, tuple(selection.numel)
    if isinstance(selection, (str, bytes)) or not isinstance(selection, Iterable):
        raise TypeError(
            f"selection must be a Selection or a list of group names, got {type(selection).__name__} {selection!r}"
        )
    names = tuple(_check_name(n, "selection") for n in selection)
    return names, names


def _missing_hint(name: str, base: str) -> str:
    if base in ("lora_A", "lora_B"):
        return f"wrap the model with peft LoRA first (peft.get_peft_model) so it has {base}"
    if base != name:
        return (
            "block-level groups transfer only to models that have that block; select "
            "with granularity='type' to transfer across depths"
        )
    return "group the model the way the selection was made (granularity= or groups=)"


def _model_groups(
    model: nn.Module,
    candidates: tuple[str, ...],
    granularity: str | None,
    groups: Mapping[str, Iterable[Any]] | None,
) -> dict[str, list[Any]]:
    from torch import nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if groups is not None:
        if granularity is not None:
            raise ValueError("pass either granularity= (to group the model) or groups= (your own grouping), not both")
        if not isinstance(groups, Mapping):
            raise TypeError(f"groups must be a mapping group name -> parameters, got {type(groups).__name__}")
        return {_check_name(k, "groups"): list(v) for k, v in groups.items()}
    from ..grouping import base_name, group_parameters

    if granularity is None:
        # The candidates (not only the selected names) tell the granularity: a block-level
        # table that selected only "norm" (ln_f) must not train every LayerNorm.
        granularity = "block" if any(base_name(n) != n for n in candidates) else "type"
    return group_parameters(model, granularity=granularity, include_frozen=True)


def _resolve(
    model: nn.Module,
    selection: Any,
    granularity: str | None,
    groups: Mapping[str, Iterable[Any]] | None,
) -> tuple[dict[str, list[Any]], dict[int, str]]:
    """The selected groups of ``model`` (validated) and id -> name of its parameters."""
    selected, candidates = _selection_names(selection)
    model_groups = _model_groups(model, candidates, granularity, groups)
    missing = [g for g in selected if g not in model_groups]
    if missing:
        from ..grouping import base_name

        have = ", ".join(model_groups) or "no groups"
        reasons = "; ".join(
            f"selected group {g!r} is not in this model (it has: {have}); {_missing_hint(g, base_name(g))}"
            for g in missing
        )
        raise ValueError(reasons)
    names = {id(p): n for n, p in model.named_parameters()}
    chosen = {g: list(model_groups[g]) for g in selected}
    _check_trainable(chosen, names)
    return chosen, names


def _check_trainable(chosen: dict[str, list[Any]], names: dict[int, str]) -> None:
    """Every tensor of the chosen groups is a floating (or complex) parameter of the model."""
    for g, params in chosen.items():
        for p in params:
            if id(p) not in names:
                raise ValueError(
                    f"group {g!r} holds a tensor of shape {tuple(p.shape)} that is not a "
                    f"parameter of this model; build groups= from this model's parameters"
                )
            if not (p.is_floating_point() or p.is_complex()):
                raise ValueError(
                    f"group {g!r} holds parameter {names[id(p)]!r} of dtype {p.dtype}, "
                    f"which cannot be trained (quantized weights need an adapter such as "
                    f"peft LoRA); leave {g!r} out of the selection"
                )


def apply_selection(
    model: nn.Module,
    selection: SelectionLike,
    *,
    granularity: str | None = None,
    groups: Mapping[str, Iterable[Any]] | None = None,
) -> dict[str, list[nn.Parameter]]:
    """Make exactly the selected groups of ``model`` trainable (Algorithm 2's transfer).

    The model is grouped with ``group_parameters(model, include_frozen=True)`` (or your
    ``groups``), so a selection made on one model applies by name to any model grouped the
    same way: the same model, or a larger one of the same family. Every parameter of a
    selected group gets ``requires_grad=True``, every other parameter ``False``. Nothing
    changes unless the whole selection applies.

    Args:
        model (nn.Module): the model to configure (a peft model for LoRA groups).
        selection (Selection or iterable of str): what to train.
        granularity (str, optional): ``"type"`` or ``"block"`` grouping (default: ``None``,
            ``"block"`` when a candidate group name has a block suffix like ``"norm@3"``,
            else ``"type"``)
        groups (Mapping[str, iterable of Parameter], optional): your own grouping of
            ``model``'s parameters instead (default: ``None``)

    Returns:
        dict[str, list[nn.Parameter]]: the selected groups, name to parameters, ready to
        build the optimizer (``GeNAdaPEFT(AdamW(params), groups=...)``).

    Raises:
        ValueError: a selected group the model does not have (the message says what to
            add), or one holding a parameter that cannot require gradients.
    """
    chosen, _ = _resolve(model, selection, granularity, groups)
    trainable = {id(p) for params in chosen.values() for p in params}
    for p in model.parameters():
        p.requires_grad_(id(p) in trainable)
    return chosen
