"""The JSON form of a :class:`~adapeft_optim.selection.Selection` (``selection.json``).

One object: ``format`` and ``version`` (checked on reading), the dataclass fields
(``groups``, ``numel``, ``appi``, ``method``, ``budget``) and, since dependencies and LoRA
settings exist, ``requires`` and ``lora`` (files without them read as none). Floats are
written with ``repr`` precision, so they round-trip exactly; an infinite APPI is written
as ``Infinity`` (Python's JSON extension).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .result import Selection

_JSON_FORMAT = "adapeft_optim.Selection"
_JSON_VERSION = 1
_JSON_KEYS = ("groups", "numel", "appi", "method", "budget")
# Written since dependencies and LoRA settings exist; older files lack them (read as none).
_JSON_OPTIONAL_KEYS = ("requires", "lora")


def _to_dict(selection: Selection) -> dict[str, Any]:
    """:meth:`Selection.to_dict`: the fields as plain JSON-compatible values (a copy)."""
    return {
        "format": _JSON_FORMAT,
        "version": _JSON_VERSION,
        "groups": list(selection.groups),
        "numel": dict(selection.numel),
        "appi": dict(selection.appi),
        "method": selection.method,
        "budget": selection.budget,
        "requires": {g: list(r) for g, r in selection.requires.items()},
        "lora": json.loads(json.dumps(selection.lora)),
    }


def _json_fields(text: Any) -> dict[str, Any]:
    """The ``Selection(...)`` keyword arguments stored in ``text``, the JSON of
    :meth:`Selection.to_json`; the fields themselves are checked by ``Selection``."""
    data = _parse(text)
    missing = [k for k in _JSON_KEYS if k not in data]
    if missing:
        raise ValueError(f"Selection JSON is missing key(s) {missing}")
    if not isinstance(data["groups"], list):
        raise ValueError(f"invalid Selection JSON: 'groups' must be a list of names, got {data['groups']!r}")
    requires = data.get("requires") or {}
    if not isinstance(requires, dict) or not all(isinstance(v, list) for v in requires.values()):
        raise ValueError(f"invalid Selection JSON: 'requires' must map group names to lists of names, got {requires!r}")
    return {
        "groups": tuple(data["groups"]),
        "numel": data["numel"],
        "appi": data["appi"],
        "method": data["method"],
        "budget": data["budget"],
        "requires": requires,
        "lora": data.get("lora"),
    }


def _parse(text: Any) -> dict[str, Any]:
    """``text`` as a JSON object of this format and version."""
    if not isinstance(text, (str, bytes, bytearray)):
        raise TypeError(
            f"Selection.from_json expects the JSON text (str), got {type(text).__name__}; "
            f"use Selection.load(path) for a file"
        )
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ValueError(f"Selection.from_json: not valid JSON ({err})") from None
    if not isinstance(data, dict):
        raise ValueError(
            f"Selection.from_json: expected a JSON object with keys {list(_JSON_KEYS)}, got {type(data).__name__}"
        )
    if data.get("format", _JSON_FORMAT) != _JSON_FORMAT:
        raise ValueError(f"Selection.from_json: format is {data['format']!r}, not {_JSON_FORMAT!r}")
    if data.get("version", _JSON_VERSION) != _JSON_VERSION:
        raise ValueError(
            f"Selection.from_json: version {data['version']!r} is not supported (this "
            f"adapeft_optim reads version {_JSON_VERSION}); upgrade adapeft_optim"
        )
    return data
