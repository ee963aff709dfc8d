"""A selection as a peft setup: the recorded LoRA settings and the ``LoraConfig`` they rebuild.

:meth:`Selection.with_lora` records how the adapters were built (:func:`_lora_settings`,
checked by :func:`_check_lora`); :meth:`Selection.to_peft_config` turns those settings and
the selected groups into a ``peft.LoraConfig`` (:func:`_peft_config`): ``bias=`` from the
bias groups, ``layers_to_transform=`` from the selected LoRA blocks and
``modules_to_save=`` from the modules holding the selected head, norm and embed groups.
peft is imported only inside :func:`_peft_config`.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from .dependencies import _LORA_PARTNER
from .validation import _check_name

if TYPE_CHECKING:
    import peft
    from torch import nn

    from .result import Selection

# LoraConfig fields that describe how the adapters are built (Selection.lora). bias= and
# modules_to_save= are left out: they say what trains, which the selection decides.
_LORA_FIELDS = (
    "task_type",
    "target_modules",
    "exclude_modules",
    "r",
    "lora_alpha",
    "lora_dropout",
    "fan_in_fan_out",
    "use_rslora",
    "use_dora",
    "init_lora_weights",
    "layers_to_transform",
    "layers_pattern",
    "rank_pattern",
    "alpha_pattern",
    "lora_bias",
)
_LORA_DERIVED = ("modules_to_save", "bias")

# Group roles peft trains through modules_to_save (a trainable copy of the module).
_SAVED_ROLES = ("head", "norm", "embed")


# -- recorded settings -----------------------------------------------------------------------------


def _plain_json(value: Any, where: str) -> Any:
    """``value`` as plain JSON data (sets sorted, tuples as lists, enums by value)."""
    if isinstance(value, enum.Enum):
        value = value.value
    if value is None or isinstance(value, (bool, str)):
        return str(value) if isinstance(value, str) else value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"lora setting {where} is {value!r}; settings must be finite")
        return float(value)
    if isinstance(value, Mapping):
        return {_check_name(k, f"lora setting {where}"): _plain_json(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return sorted(_plain_json(v, where) for v in value)
    if isinstance(value, (list, tuple)):
        return [_plain_json(v, where) for v in value]
    raise TypeError(
        f"lora setting {where} must be JSON data (str, number, bool, None, list, dict), got "
        f"{type(value).__name__} {value!r}"
    )


def _check_lora(lora: Any) -> dict[str, Any] | None:
    if lora is None:
        return None
    if not isinstance(lora, Mapping):
        raise TypeError(
            f"lora must be a dict of LoraConfig settings (e.g. {{'target_modules': "
            f"['query', 'value'], 'r': 8}}) or None, got {type(lora).__name__}; use "
            f"Selection.with_lora(peft_model) to record a model's settings"
        )
    derived = [k for k in _LORA_DERIVED if k in lora]
    if derived:
        raise ValueError(
            f"lora settings must not hold {derived}: to_peft_config derives them from the "
            f"selected groups; leave them out (or pass them to to_peft_config to override)"
        )
    return {_check_name(k, "lora"): _plain_json(v, repr(k)) for k, v in lora.items()}


def _lora_settings(source: Any) -> dict[str, Any]:
    """The ``lora`` settings :meth:`Selection.with_lora` records from ``source``."""
    if isinstance(source, Mapping):
        return dict(source)
    config = _active_config(source)
    to_dict = getattr(config, "to_dict", None)
    if not callable(to_dict):
        raise TypeError(
            f"with_lora expects a peft model, a LoraConfig or a dict of LoraConfig "
            f"settings, got {type(source).__name__}"
        )
    settings = to_dict()
    peft_type = settings.get("peft_type")
    peft_type = peft_type.value if isinstance(peft_type, enum.Enum) else peft_type
    if peft_type not in (None, "LORA"):
        raise ValueError(
            f"with_lora records LoRA settings, got a {peft_type} config; to_peft_config builds a LoraConfig only"
        )
    return {k: settings[k] for k in _LORA_FIELDS if k in settings}


def _active_config(source: Any) -> Any:
    """The active adapter's config of a PeftModel; anything else as it is."""
    configs = getattr(source, "peft_config", None)
    if not isinstance(configs, Mapping):
        return source
    adapter = getattr(source, "active_adapter", "default")
    if not isinstance(adapter, str) or adapter not in configs:
        raise ValueError(
            f"cannot tell the active adapter of this peft model (active_adapter="
            f"{adapter!r}, adapters {list(configs)}); pass its LoraConfig instead"
        )
    return configs[adapter]


# -- the LoraConfig --------------------------------------------------------------------------------


def _peft_config(
    selection: Selection,
    model: nn.Module | None,
    modules_to_save: Iterable[str] | None,
    overrides: dict[str, Any],
) -> peft.LoraConfig:
    """:meth:`Selection.to_peft_config` (see there)."""
    try:
        import peft
    except ImportError:  # pragma: no cover - peft is a dependency of the LoRA groups
        raise ImportError("to_peft_config needs peft: pip install peft") from None
    _check_no_base_weights(selection)
    settings = _recorded_settings(selection, overrides)
    layers = _selected_layers(selection)
    if layers is not None:
        settings["layers_to_transform"] = layers
    bias = _bias_setting(selection, overrides)
    if bias is not None:
        settings["bias"] = bias
    settings["modules_to_save"] = _modules_to_save(selection, model, modules_to_save) or None
    settings.update(overrides)
    return peft.LoraConfig(**settings)


def _check_no_base_weights(selection: Selection) -> None:
    from ..grouping import base_name

    roles = {base_name(g) for g in selection.groups}
    if "others" in roles:
        others = [g for g in selection.groups if base_name(g) == "others"]
        raise ValueError(
            f"selected group(s) {others} are base weights, which a LoraConfig cannot "
            f"train (only adapters, modules_to_save and biases); train this selection "
            f"with apply_selection(model, selection) instead"
        )


def _recorded_settings(selection: Selection, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of :attr:`Selection.lora`, which must name (or be given) ``target_modules``."""
    from ..grouping import base_name

    settings = dict(selection.lora or {})
    if "target_modules" not in settings and "target_modules" not in overrides:
        if any(base_name(g) in _LORA_PARTNER for g in selection.numel):
            raise ValueError(
                "this Selection records no LoRA settings (target_modules, r, ...): record "
                "them with selection.with_lora(peft_model) (or a LoraConfig or dict) "
                "before saving it, or pass target_modules=... to to_peft_config"
            )
        raise ValueError(
            f"this Selection has no LoRA groups (candidates {list(selection.numel)}) and a "
            f"LoraConfig needs adapters: train it with apply_selection(model, selection) "
            f"on the plain model, or pass target_modules=... to add LoRA adapters"
        )
    return settings


def _selected_layers(selection: Selection) -> list[int] | None:
    """``layers_to_transform``: the selected blocks when the selection picks the LoRA groups
    of some blocks only (``lora_A@3``), else ``None``."""
    from ..grouping import base_name

    lora_selected = [g for g in selection.groups if base_name(g) in _LORA_PARTNER]
    if lora_selected and all(base_name(g) != g for g in lora_selected):
        blocks = {g.partition("@")[2] for g in lora_selected}
        candidates = {g.partition("@")[2] for g in selection.numel if base_name(g) in _LORA_PARTNER}
        if blocks < candidates and all(b.isdigit() for b in blocks):
            return sorted(int(b) for b in blocks)
    return None


def _bias_setting(selection: Selection, overrides: Mapping[str, Any]) -> str | None:
    """peft's ``bias=``: ``"all"`` or ``"none"``; ``None`` when only some bias groups are
    selected and ``overrides`` sets it."""
    from ..grouping import base_name

    bias_groups = [g for g in selection.numel if base_name(g) == "bias"]
    bias_selected = [g for g in selection.groups if base_name(g) == "bias"]
    if not bias_selected:
        return "none"
    if len(bias_selected) == len(bias_groups):
        return "all"
    if "bias" not in overrides:
        raise ValueError(
            f"selected bias groups {bias_selected} are only part of the biases "
            f"({bias_groups}), and peft's bias= trains all biases or none: select at "
            f"granularity='type', or pass bias='all' and call apply_selection(peft_model, "
            f"selection) after get_peft_model"
        )
    return None


def _modules_to_save(selection: Selection, model: nn.Module | None, modules_to_save: Iterable[str] | None) -> list[str]:
    """The given ``modules_to_save`` (checked), or the modules of the selected head, norm and
    embed groups in ``model``."""
    from ..grouping import base_name

    saved = [g for g in selection.groups if base_name(g) in _SAVED_ROLES]
    if modules_to_save is not None:
        if isinstance(modules_to_save, str) or not isinstance(modules_to_save, Iterable):
            raise TypeError(
                f"modules_to_save must be a list of module names, got "
                f"{type(modules_to_save).__name__} {modules_to_save!r}"
            )
        return [_check_name(n, "modules_to_save") for n in modules_to_save]
    if not saved:
        return []
    if model is None:
        raise ValueError(
            f"selected group(s) {saved} are trained in peft through "
            f"modules_to_save, whose module names come from the model: pass model= "
            f"(the base model or the peft model) or modules_to_save=[...]"
        )
    return _saved_module_names(model, selection, saved)


def _saved_module_names(model: nn.Module, selection: Selection, saved: list[str]) -> list[str]:
    """peft ``modules_to_save`` names (dotted paths in the base model) of ``saved`` groups."""
    from torch import nn

    from ..grouping import _core_path, base_name, group_parameters

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    granularity = "block" if any(base_name(n) != n for n in selection.numel) else "type"
    groups = group_parameters(model, granularity=granularity, include_frozen=True)
    missing = [g for g in saved if g not in groups]
    if missing:
        raise ValueError(
            f"selected group(s) {missing} are not in this model (it has: "
            f"{', '.join(groups) or 'no groups'}); pass the model the selection was made on "
            f"(or its base model)"
        )
    modules = dict(model.named_modules(remove_duplicate=False))
    core = _core_path(model, modules)
    names = {id(p): n for n, p in model.named_parameters()}
    paths: list[str] = []
    for g in saved:
        for p in groups[g]:
            path = _owner_path(names[id(p)], g, modules, core)
            if path not in paths:
                paths.append(path)
    # A module inside another saved module is saved with it.
    return [p for p in paths if not any(p.startswith(q + ".") for q in paths if q != p)]


def _owner_path(name: str, group: str, modules: dict[str, nn.Module], core: tuple[str, ...]) -> str:
    """The dotted path, in the base model, of the module owning parameter ``name``."""
    from ..grouping import _is_modules_to_save_wrapper

    segments = name.split(".")[:-1]
    # A copy inside peft's ModulesToSaveWrapper is saved under the wrapper's name.
    for i, segment in enumerate(segments):
        if segment == "modules_to_save" and _is_modules_to_save_wrapper(modules[".".join(segments[:i])]):
            segments = segments[:i]
            break
    if tuple(segments[: len(core)]) == core:
        segments = segments[len(core) :]
    if not segments:
        raise ValueError(
            f"parameter {name!r} of group {group!r} belongs to the model itself, "
            f"not to a submodule, so peft's modules_to_save cannot hold it; pass "
            f"modules_to_save=[...] yourself"
        )
    return ".".join(segments)
