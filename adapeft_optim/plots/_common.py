"""Shared helpers of the figures: the lazy matplotlib import, saving, record reading, checks.

Nothing here imports matplotlib at module level (Note [plots leave no global trace] in
:mod:`adapeft_optim.plots`).
"""

from __future__ import annotations

import math
import operator
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

_MATPLOTLIB_HINT = "plotting needs matplotlib: pip install 'adapeft-optim[plot]'"
_RECORD_KEYS = ("step", "group", "ppi", "accepted")


def _matplotlib():
    try:
        import matplotlib as mpl
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(_MATPLOTLIB_HINT) from exc
    return Figure, mpl


def _save(fig, path, dpi) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    path = Path(os.fspath(path))
    if not path.suffix:
        path = path.with_suffix(".png")
    canvas = FigureCanvasAgg(fig)
    fmt = path.suffix[1:].lower()
    supported = canvas.get_supported_filetypes()
    if fmt not in supported:
        raise ValueError(
            f"cannot write {str(path)!r}: unsupported suffix {path.suffix!r}; use one of {sorted(supported)}"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format=fmt, dpi=dpi)
    return path


def _records(history) -> list[tuple[int, str, float, bool, float]]:
    """Validated (step, group, ppi, valued) tuples of a history (Note [valued probes])."""
    if not isinstance(history, (list, tuple)) and hasattr(history, "history"):
        history = history.history
    if isinstance(history, (str, bytes, Mapping)) or not isinstance(history, Iterable):
        raise TypeError(
            f"history must be a list of probe records (opt.history) or an object with a "
            f"'history' attribute, got {type(history).__name__}"
        )
    out = []
    for i, rec in enumerate(history):
        if not isinstance(rec, Mapping):
            raise TypeError(f"history record {i} must be a dict, got {type(rec).__name__}: {rec!r}")
        missing = [key for key in _RECORD_KEYS if key not in rec]
        if missing:
            raise ValueError(
                f"history record {i} has no {missing} key(s); expected GeNAdaPEFT.history "
                f"records with keys {list(_RECORD_KEYS)}"
            )
        try:
            step = operator.index(rec["step"])
        except TypeError:
            raise TypeError(f"history record {i} has a non-integer step {rec['step']!r}") from None
        ppi = rec["ppi"]
        ppi = math.nan if ppi is None else float(ppi)
        valued = rec["case"] is not None if "case" in rec else bool(rec["accepted"])
        out.append((step, str(rec["group"]), ppi, valued, float(rec.get("weight", 1))))
    return out


def _tick_positions(n: int, most: int = 10) -> list[int]:
    if n <= most:
        return list(range(n))
    return sorted(set(np.linspace(0, n - 1, most).round().astype(int).tolist()))


def _require_records(steps: np.ndarray, what: str) -> None:
    if steps.size == 0:
        raise ValueError(f"cannot draw the {what}: the history holds no probe record; run some probe steps first")


def _check_nonnegative(name: str, value: float) -> float:
    value = float(value)
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"Invalid {name}: {value}; it must be finite and >= 0")
    return value


def _as_1d_float(name: str, values) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {x.shape}")
    return x
