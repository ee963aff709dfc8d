"""Which groups cannot learn without which: the ``requires=`` of every solver.

Some groups cannot learn alone: peft initialises ``lora_B`` to zero, so ``lora_A``'s gradient
is exactly zero until ``lora_B`` moves. :func:`group_dependencies` reads that from the
tensors, and every solver takes it as ``requires=``: a group is selected only together with
all the groups it requires (a knapsack with precedence constraints).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from .validation import _check_name

if TYPE_CHECKING:
    import torch

# peft's LoRA update is B @ A: each factor's gradient is a product with the other, so a
# factor whose partner is all zero has an exactly zero gradient and cannot learn alone.
_LORA_PARTNER = {"lora_A": "lora_B", "lora_B": "lora_A"}


def group_dependencies(
    groups: Mapping[str, Iterable[torch.Tensor]],
) -> dict[str, tuple[str, ...]]:
    """Which groups cannot learn without which, read from the current tensors.

    peft's LoRA adds ``B @ A`` to a layer, so ``A``'s gradient is a product with ``B`` and
    vice versa: a factor whose partner is exactly zero gets an exactly zero gradient.
    peft initialises ``lora_B`` to zero (and ``lora_embedding_A`` for embeddings), so on a
    fresh adapter ``lora_A`` requires ``lora_B``. Once the partner has moved (after
    training, or with a non-zero init) the factor learns alone and there is no dependency.

    Pairs: ``lora_A`` with ``lora_B``, and at block granularity ``lora_A@3`` with
    ``lora_B@3``. A group requires its partner when every tensor of the partner is zero;
    when both are zero they require each other (selected together, neither learns).

    Args:
        groups (Mapping[str, iterable of Tensor]): group name -> parameters, e.g.
            ``group_parameters(model)`` or ``opt.groups``.

    Returns:
        dict[str, tuple[str, ...]]: group -> the groups it requires, only for groups that
        require something, in ``groups``' order; the ``requires=`` of :func:`select_groups`.

    Raises:
        TypeError: ``groups`` is not a mapping of tensors.
    """
    from ..grouping import base_name

    tensors = _group_tensors(groups)
    requires = {}
    for name in tensors:
        role = base_name(name)
        if role not in _LORA_PARTNER:
            continue
        partner = _LORA_PARTNER[role] + name[len(role) :]
        partner_tensors = tensors.get(partner)
        if partner_tensors and not any(bool(t.detach().any()) for t in partner_tensors):
            requires[name] = (partner,)
    return requires


def _group_tensors(groups: Mapping[str, Iterable[torch.Tensor]]) -> dict[str, list[torch.Tensor]]:
    """``groups`` validated as a mapping group name -> list of tensors."""
    import torch

    if not isinstance(groups, Mapping):
        raise TypeError(
            f"group_dependencies expects a mapping group name -> parameters such as "
            f"group_parameters(model), got {type(groups).__name__}"
        )
    tensors: dict[str, list[torch.Tensor]] = {}
    for name, params in groups.items():
        _check_name(name, "groups")
        if isinstance(params, torch.Tensor) or not isinstance(params, Iterable):
            raise TypeError(f"groups[{name!r}] must be a list of tensors, got {type(params).__name__}")
        tensors[name] = list(params)
        for p in tensors[name]:
            if not isinstance(p, torch.Tensor):
                raise TypeError(
                    f"groups[{name!r}] holds a {type(p).__name__}, not a tensor; pass group_parameters(model)"
                )
    return tensors
