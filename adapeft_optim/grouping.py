"""Split a model's parameters into the paper's named groups (design §5).

The groups are ``lora_A``, ``lora_B``, ``head``, ``norm``, ``bias``, ``embed`` and
``others``. A parameter is classified by the type of the module that owns it and by the
dotted segments of its name, never by substring tests (``"lora_B" in name`` would also
match ``lora_Bias`` or ``my_classifier``).

Example::

    groups = group_parameters(model)                # {"lora_A": [...], "lora_B": [...]}
    groups = group_parameters(model, include_frozen=True, granularity="block")
    for row in describe_groups(groups):
        print(f"{row.name:12s} {row.numel:>10d} {row.fraction:7.2%}")
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import NamedTuple

import torch
from torch import nn

__all__ = [
    "GROUP_NAMES",
    "GRANULARITIES",
    "HEAD_NAMES",
    "GroupRow",
    "base_name",
    "describe_groups",
    "group_parameters",
]

GROUP_NAMES = ("lora_A", "lora_B", "head", "norm", "bias", "embed", "others")

GRANULARITIES = ("type", "block")

# Top-level module names (below any peft / DDP / torch.compile wrapper) of output layers.
# "pre_classifier" is DistilBERT's first classifier layer, the counterpart of RoBERTa's
# classifier.dense, which is head as well.
HEAD_NAMES = ("lm_head", "classifier", "score", "qa_outputs", "cls", "pre_classifier")

# peft names the adapter containers lora_A/lora_B (nn.ModuleDict of per-adapter layers)
# and, for embeddings, lora_embedding_A/lora_embedding_B (nn.ParameterDict).
_LORA_SEGMENTS = {
    "lora_A": "lora_A",
    "lora_embedding_A": "lora_A",
    "lora_B": "lora_B",
    "lora_embedding_B": "lora_B",
}

_NORM_TYPES: tuple[type[nn.Module], ...] = (
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
) + ((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ())

_EMBEDDING_TYPES = (nn.Embedding, nn.EmbeddingBag)

_BLOCK_SEPARATOR = "@"


class GroupRow(NamedTuple):
    """One line of :func:`describe_groups`."""

    name: str
    tensors: int
    numel: int
    fraction: float


def group_parameters(
    model: nn.Module,
    *,
    granularity: str = "type",
    include_frozen: bool = False,
    head_names: Iterable[str] = HEAD_NAMES,
) -> dict[str, list[nn.Parameter]]:
    """Group a model's parameters by role, as in the AdaPEFT paper.

    Each parameter goes to the first group whose rule matches, in this order:

    1. ``lora_A`` / ``lora_B``: a segment of its name is ``lora_A`` / ``lora_B`` (peft's
       adapter ``ModuleDict``; also a hand-written ``self.lora_A`` parameter) or
       ``lora_embedding_A`` / ``lora_embedding_B`` (peft's embedding adapters).
    2. ``norm``: its module is a LayerNorm, RMSNorm, GroupNorm, BatchNorm/InstanceNorm,
       or of a class whose name (or a base class's name) ends with ``Norm``
       (``T5LayerNorm``, ``LlamaRMSNorm``). Weight and bias both. A LayerNorm inside the
       head is ``norm``.
    3. ``head``: its module path, below peft's ``base_model.model`` (and DDP's ``module``,
       ``torch.compile``'s ``_orig_mod``), starts with one of ``head_names``, or lies
       under ``model.get_output_embeddings()``. Everything under the head is head,
       biases included (RoBERTa's ``classifier.dense`` and ``classifier.out_proj``,
       BERT's ``cls.predictions.bias``, peft's ``classifier.modules_to_save.default``
       copy). Exception: a tensor that is also
       owned by an embedding module is ``embed``; a head tied to the input embedding
       (GPT-2's ``lm_head.weight`` is ``wte.weight``) is that one table.
    4. ``embed``: its module is an ``nn.Embedding`` / ``nn.EmbeddingBag`` (subclasses
       included) or of a class whose name ends with ``Embedding``/``Embeddings`` (ViT's
       ``position_embeddings`` parameter).
    5. ``bias``: its own name is ``bias``.
    6. ``others``: everything else.

    peft's ``ModulesToSaveWrapper`` (``modules_to_save=[...]``, and the head of
    ``task_type="SEQ_CLS"``) keeps the module twice: the trainable copy
    ``<module>.modules_to_save.<adapter>`` and the frozen ``<module>.original_module``,
    which peft uses only with the adapters disabled and never trains. Only the copy is
    grouped, also with ``include_frozen=True``: a head is counted once, and
    :func:`~adapeft_optim.selection.apply_selection` never makes the original trainable
    (see Note [modules_to_save originals]).

    With ``granularity="block"`` every group is split further by transformer block:
    the block index is the first integer segment of the name whose parent module is an
    ``nn.ModuleList`` (GPT-2's ``h.3``, BERT's ``layer.3``, Llama's ``layers.3``, T5's
    ``block.3``), giving names such as ``"norm@3"``; parameters outside every block keep
    the plain name (GPT-2's ``ln_f`` is ``"norm"``). Only the first such index counts,
    so nested lists (T5's ``block.0.layer.1``) give the outer index, and an
    encoder-decoder's encoder block i and decoder block i share ``"@i"``.
    ``nn.Sequential`` children are not blocks (they are usually layers of one MLP).

    Args:
        model (nn.Module): the model, a peft ``PeftModel`` or a wrapped module.
        granularity (str): ``"type"`` for one group per role, ``"block"`` to split each
            role by transformer block (default: ``"type"``)
        include_frozen (bool): also group parameters with ``requires_grad=False``
            (default: ``False``, so a peft LoRA model gives only ``lora_A``/``lora_B``)
        head_names (iterable of str): top-level module names that are output layers; a
            dotted name (``"cls.predictions"``) matches that many leading segments. To
            extend the default pass ``(*HEAD_NAMES, "my_head")``
            (default: :data:`HEAD_NAMES`)

    Returns:
        dict[str, list[nn.Parameter]]: group name to parameters, groups in
        :data:`GROUP_NAMES` order (with ``"block"``: the plain group, then blocks in
        ascending index), parameters in ``model.named_parameters()`` order, each tensor
        once, empty groups dropped.

    Raises:
        TypeError: ``model`` is not an ``nn.Module``, or ``head_names`` is a string.
        ValueError: ``granularity`` is not one of :data:`GRANULARITIES`.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(
            f"group_parameters expects the model as an nn.Module (a transformers or peft "
            f"model), got {type(model).__name__}; to train explicit parameter lists, pass "
            f"a dict name -> list of parameters as `groups` instead"
        )
    if granularity not in GRANULARITIES:
        raise ValueError(f"Invalid granularity: {granularity!r}; use one of {GRANULARITIES}")
    if isinstance(head_names, str):
        raise TypeError(
            f"head_names must be a collection of module names, got the string "
            f"{head_names!r}; pass ({head_names!r},) or (*HEAD_NAMES, {head_names!r})"
        )

    # remove_duplicate=False: a module reachable under two paths must resolve under both.
    modules = dict(model.named_modules(remove_duplicate=False))
    head_prefixes = _head_prefixes(model, modules, head_names)
    embedding_tensors = {id(p) for m in modules.values() if _is_embedding(m) for p in m.parameters(recurse=False)}
    module_lists = {path for path, m in modules.items() if isinstance(m, nn.ModuleList)}
    originals = _modules_to_save_originals(model, modules)

    buckets: dict[tuple[str, int], list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not (param.requires_grad or include_frozen) or id(param) in originals:
            continue
        segments = tuple(name.split("."))
        owner = modules[".".join(segments[:-1])]
        group = _classify(segments, owner, id(param) in embedding_tensors, head_prefixes)
        block = _block_index(segments, module_lists) if granularity == "block" else -1
        buckets.setdefault((group, block), []).append(param)

    # Block -1 is "outside every block", so it sorts before block 0.
    order = sorted(buckets, key=lambda key: (GROUP_NAMES.index(key[0]), key[1]))
    return {_group_key(group, block): buckets[(group, block)] for group, block in order}


def base_name(name: str) -> str:
    """Return the role of a group name: ``"norm"`` for ``"norm@3"`` and for ``"norm"``."""
    return name.partition(_BLOCK_SEPARATOR)[0]


def describe_groups(groups: Mapping[str, Iterable[torch.Tensor]]) -> list[GroupRow]:
    """Summarise groups as rows of (name, tensors, numel, fraction), for printing.

    Args:
        groups (Mapping[str, Iterable[Tensor]]): e.g. the result of
            :func:`group_parameters`.

    Returns:
        list[GroupRow]: one row per group in the mapping's order; ``fraction`` is the
        group's numel over the total numel of all given groups (0.0 when that is 0).

    Raises:
        TypeError: ``groups`` is not a mapping.
    """
    if not isinstance(groups, Mapping):
        raise TypeError(
            f"describe_groups expects a mapping name -> parameters such as "
            f"group_parameters(model), got {type(groups).__name__}"
        )
    counts = [(name, [p.numel() for p in params]) for name, params in groups.items()]
    total = sum(sum(sizes) for _, sizes in counts)
    return [GroupRow(name, len(sizes), sum(sizes), sum(sizes) / total if total else 0.0) for name, sizes in counts]


def _classify(
    segments: tuple[str, ...],
    owner: nn.Module,
    is_embedding_tensor: bool,
    head_prefixes: list[tuple[str, ...]],
) -> str:
    for segment in segments:
        if segment in _LORA_SEGMENTS:
            return _LORA_SEGMENTS[segment]
    if _is_norm(owner):
        return "norm"
    if is_embedding_tensor:
        return "embed"
    if any(segments[: len(prefix)] == prefix for prefix in head_prefixes):
        return "head"
    if _is_embedding(owner):
        return "embed"
    if segments[-1] == "bias":
        return "bias"
    return "others"


# Note [modules_to_save originals]: peft's ModulesToSaveWrapper holds the module twice,
# ``original_module`` (the base model's, used only with the adapters disabled) and a
# trainable copy per adapter in ``modules_to_save``. Grouping the original would count a
# SEQ_CLS head twice (a MiniLM 384 -> 12 classifier as 9,240 parameters instead of 4,620)
# and let apply_selection train a module the forward pass does not use. A tensor of the
# original that is also reachable under another name (a head tied to the input embedding)
# is still that other module's, so the test is on every name of the tensor.


def _is_modules_to_save_wrapper(module: nn.Module) -> bool:
    copies = getattr(module, "modules_to_save", None)
    return (
        any(cls.__name__ == "ModulesToSaveWrapper" for cls in type(module).__mro__)
        and isinstance(getattr(module, "original_module", None), nn.Module)
        and isinstance(copies, nn.ModuleDict)
        and len(copies) > 0
    )


def _modules_to_save_originals(model: nn.Module, modules: dict[str, nn.Module]) -> set[int]:
    """ids of the tensors reachable only through a ModulesToSaveWrapper's original_module."""
    hidden = {
        path + ".original_module" if path else "original_module"
        for path, m in modules.items()
        if _is_modules_to_save_wrapper(m)
    }
    if not hidden:
        return set()
    under: dict[int, bool] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        segments = name.split(".")
        inside = any(".".join(segments[:i]) in hidden for i in range(1, len(segments)))
        under[id(param)] = under.get(id(param), True) and inside
    return {pid for pid, only_original in under.items() if only_original}


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, _NORM_TYPES) or any(cls.__name__.endswith("Norm") for cls in type(module).__mro__)


def _is_embedding(module: nn.Module) -> bool:
    return isinstance(module, _EMBEDDING_TYPES) or any(
        cls.__name__.endswith(("Embedding", "Embeddings")) for cls in type(module).__mro__
    )


def _core_path(model: nn.Module, modules: dict[str, nn.Module]) -> tuple[str, ...]:
    """Segments leading from ``model`` to the task model inside its wrappers."""
    core = model
    for _ in range(16):  # wrappers nest a few levels at most; never loop on a cycle
        if isinstance(core, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            inner = core.module
        elif isinstance(getattr(core, "_orig_mod", None), nn.Module):  # torch.compile
            inner = core._orig_mod
        elif callable(getattr(type(core), "get_base_model", None)):  # peft PeftModel
            inner = core.get_base_model()
        else:
            break
        if not isinstance(inner, nn.Module) or inner is core:
            break
        core = inner
    for path, module in modules.items():
        if module is core:
            return tuple(path.split(".")) if path else ()
    return ()


def _head_prefixes(model: nn.Module, modules: dict[str, nn.Module], head_names: Iterable[str]) -> list[tuple[str, ...]]:
    core = _core_path(model, modules)
    prefixes = [core + tuple(name.split(".")) for name in head_names]
    get_output_embeddings = getattr(model, "get_output_embeddings", None)
    if callable(get_output_embeddings):
        try:
            output = get_output_embeddings()
        except (NotImplementedError, AttributeError):
            output = None  # backbones without an output layer
        if isinstance(output, nn.Module):
            for path, module in modules.items():
                if module is output and path:
                    prefixes.append(tuple(path.split(".")))
    return prefixes


def _block_index(segments: tuple[str, ...], module_lists: set[str]) -> int:
    for i, segment in enumerate(segments[:-1]):
        if segment.isdigit() and ".".join(segments[:i]) in module_lists:
            return int(segment)
    return -1


def _group_key(group: str, block: int) -> str:
    return group if block < 0 else f"{group}{_BLOCK_SEPARATOR}{block}"
