"""Checkpoints of the trained groups only: :func:`save_selected` and :func:`load_selected`.

A safetensors file holding the selected groups' tensors, keyed by their
``model.named_parameters()`` names, with the selection's JSON in the file's metadata (under
:data:`_METADATA_KEY`), to load onto a fresh base model of the same architecture.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .apply import _resolve
from .result import Selection

if TYPE_CHECKING:
    import torch
    from torch import nn

# Key of the Selection JSON in a save_selected file's safetensors metadata.
_METADATA_KEY = "adapeft_optim.selection"


def save_selected(
    model: nn.Module,
    selection: Selection,
    path: str | os.PathLike,
    *,
    granularity: str | None = None,
    groups: Mapping[str, Iterable[Any]] | None = None,
) -> None:
    """Save only the selected groups' tensors, with the selection, as safetensors.

    Tensors are keyed by their ``model.named_parameters()`` names (a tied weight once, under
    the name ``named_parameters()`` yields); the selection's JSON is in the file's
    metadata. Load with :func:`load_selected` onto a fresh base model.

    Args:
        model (nn.Module): the trained model.
        selection (Selection): the groups that were trained.
        path (str or PathLike): the ``.safetensors`` file to write.
        granularity (str, optional): as in :func:`apply_selection` (default: ``None``)
        groups (Mapping, optional): as in :func:`apply_selection` (default: ``None``)
    """
    from safetensors.torch import save_file

    if not isinstance(selection, Selection):
        raise TypeError(
            f"save_selected needs a Selection (its JSON goes into the file), got "
            f"{type(selection).__name__}; build one with Selection.from_groups(names, numel)"
        )
    chosen, names = _resolve(model, selection, granularity, groups)
    tensors = {names[id(p)]: p.detach().to("cpu").contiguous() for params in chosen.values() for p in params}
    save_file(tensors, os.fspath(path), metadata={_METADATA_KEY: selection.to_json()})


def load_selected(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    strict: bool = True,
    granularity: str | None = None,
    groups: Mapping[str, Iterable[Any]] | None = None,
) -> Selection:
    """Load a :func:`save_selected` file onto a fresh base model of the same architecture.

    Everything is checked before any parameter is written. ``requires_grad`` is left as is;
    call :func:`apply_selection` with the returned selection to go on training.

    Args:
        model (nn.Module): the base model (wrapped with peft the same way, for LoRA groups).
        path (str or PathLike): the file written by :func:`save_selected`.
        strict (bool): require the file to hold exactly the parameters of the model's
            selected groups; with ``False``, load the tensors whose names the model has and
            ignore the rest (default: ``True``)
        granularity (str, optional): as in :func:`apply_selection` (default: ``None``)
        groups (Mapping, optional): as in :func:`apply_selection` (default: ``None``)

    Returns:
        Selection: the selection stored in the file.

    Raises:
        ValueError: not a save_selected file, missing or unexpected parameter names
            (``strict``), or a shape mismatch.
    """
    import torch
    from safetensors import safe_open

    with safe_open(os.fspath(path), framework="pt") as f:
        metadata = f.metadata() or {}
        keys = list(f.keys())
        selection = _stored_selection(metadata, path)
        params = dict(model.named_parameters())
        if strict:
            chosen, names = _resolve(model, selection, granularity, groups)
            to_load = _expected_names(chosen, names, keys, selection, path)
        else:
            to_load = _matching_names(keys, params, path)
        tensors = {n: f.get_tensor(n) for n in to_load}
    _check_shapes(tensors, params, path)
    with torch.no_grad():
        for n, t in tensors.items():
            params[n].copy_(t)
    return selection


def _stored_selection(metadata: Mapping[str, str], path: str | os.PathLike) -> Selection:
    """The Selection in a save_selected file's metadata."""
    if _METADATA_KEY not in metadata:
        raise ValueError(
            f"{os.fspath(path)!r} has no {_METADATA_KEY!r} metadata: it was not written "
            f"by save_selected (read plain safetensors files with "
            f"safetensors.torch.load_file)"
        )
    return Selection.from_json(metadata[_METADATA_KEY])


def _expected_names(
    chosen: dict[str, list[Any]],
    names: dict[int, str],
    keys: list[str],
    selection: Selection,
    path: str | os.PathLike,
) -> list[str]:
    """``strict=True``: the names of the chosen groups' parameters, exactly the file's keys."""
    expected = [names[id(p)] for ps in chosen.values() for p in ps]
    missing = [n for n in expected if n not in keys]
    expected_set = set(expected)
    unexpected = [n for n in keys if n not in expected_set]
    if missing or unexpected:
        raise ValueError(
            f"{os.fspath(path)!r} does not match the selected groups "
            f"{list(selection.groups)} of this model: missing {missing}, "
            f"unexpected {unexpected}; is it the same architecture (and peft "
            f"wrapping)? Pass strict=False to load the matching names only"
        )
    return expected


def _matching_names(keys: list[str], params: Mapping[str, Any], path: str | os.PathLike) -> list[str]:
    """``strict=False``: the file's keys that name parameters of the model (at least one)."""
    to_load = [n for n in keys if n in params]
    if keys and not to_load:
        raise ValueError(
            f"none of the {len(keys)} tensors in {os.fspath(path)!r} (e.g. "
            f"{keys[0]!r}) is a parameter of this model; is it the same "
            f"architecture (and peft wrapping)?"
        )
    return to_load


def _check_shapes(
    tensors: Mapping[str, torch.Tensor], params: Mapping[str, torch.Tensor], path: str | os.PathLike
) -> None:
    mismatched = [
        f"{n}: file {tuple(t.shape)} vs model {tuple(params[n].shape)}"
        for n, t in tensors.items()
        if t.shape != params[n].shape
    ]
    if mismatched:
        raise ValueError(
            f"shape mismatch loading {os.fspath(path)!r}: {'; '.join(mismatched)}; the base "
            f"model must have the architecture the file was saved from"
        )
