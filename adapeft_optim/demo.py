"""``adapeft demo``: Algorithm 2 of the paper end to end, offline, on the embedded task.

1. Pre-trained GPT-2s, a small one and a larger one, on synthetic task A (cached after the
   first run; see :mod:`adapeft_optim.task`).
2. Warm-up with probes (Algorithm 1): the *small* model with LoRA, every group trainable,
   GeNAdaPEFT over AdamW on task B for ~10% of the step budget.
3. The APPI table and the greedy frontier (:func:`~adapeft_optim.selection.pareto_frontier`).
4. The selection at ``budget`` (a fraction of the small model's parameters), transferred by
   group name to the *large* model with :func:`~adapeft_optim.selection.apply_selection` and
   trained there with plain AdamW for the full step budget (the cost of ordinary PEFT).
5. The same step budget, batches and seed for fixed recipes on the large model (LoRA, LoRA-FA,
   BitFit, LayerNorm, linear probing, full fine-tuning), and a comparison table.
6. ``results.json`` (every number of the tables, the probe history; JSON-safe: non-finite
   floats are ``null``), ``selection.json`` and PNGs in the output folder.

Everything that enters ``results.json`` is a function of the arguments and of the number of
torch threads (recorded in its ``config``; float sums are ordered differently with more
threads, APPI moved by up to 0.3% between 1 and 2): the same seed and the same thread count
give the same file (timings are printed, not saved).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import json
import math
import sys
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

from . import task as T

__all__ = [
    "MIN_VALUED_PROBES",
    "DemoConfig",
    "DemoError",
    "FewProbesWarning",
    "appi_table",
    "few_probes_message",
    "format_probe_summary",
    "format_table",
    "json_safe",
    "probe_summary",
    "run_demo",
    "select_or_explain",
]

# APPI is a sum over probes; with fewer valued probes than this a group's rank rests on one or
# two line fits, each on a single batch.
MIN_VALUED_PROBES = 3


class DemoError(RuntimeError):
    """A demo setting that cannot work (the message says which and what to change)."""


class FewProbesWarning(UserWarning):
    """Some groups have too few valued probes for their APPI rank to mean much."""


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Settings of :func:`run_demo` (the ``adapeft demo`` flags).

    Args:
        seed (int): seed of LoRA initialisation and of the batch streams (default: 0)
        steps (int): fine-tuning steps T of every large-model run (default: 200)
        budget (float): fraction of the small model's parameters the selection may train
            (default: 0.1)
        small (str): size of the model probed (a :data:`~adapeft_optim.task.SIZES` name or
            ``"LxD"``) (default: "small")
        large (str): size of the model the selection is transferred to (default: "large")
        warmup (int, optional): probing steps; ``None`` for 10% of ``steps`` (at least
            ``4 * lazy``, so a few probes happen) (default: None)
        lazy (int): probe every ``lazy`` warm-up steps (default: 2)
        method (str): ``"greedy"``, ``"prefix"`` or ``"exact"`` selection (default: "greedy")
        pretrain_steps (int): pre-training steps on task A (default: 200)
        batch_size (int): sequences per step (default: 16)
        plots (bool): write the PNGs (default: True)
    """

    seed: int = 0
    steps: int = 200
    budget: float = 0.1
    small: str = "small"
    large: str = "large"
    warmup: int | None = None
    lazy: int = 2
    method: str = "greedy"
    pretrain_steps: int = T.PRETRAIN_STEPS
    batch_size: int = T.BATCH_SIZE
    plots: bool = True

    def __post_init__(self) -> None:
        for key in ("steps", "lazy", "pretrain_steps", "batch_size"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise DemoError(f"Invalid {key}: {value!r}; use an int >= 1")
        if self.warmup is not None and (
            isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 1
        ):
            raise DemoError(f"Invalid warmup: {self.warmup!r}; use an int >= 1 (or leave it out for 10% of the steps)")
        if not (isinstance(self.budget, (int, float)) and 0.0 < self.budget <= 1.0):
            raise DemoError(f"Invalid budget: {self.budget!r}; use a fraction of parameters in (0, 1], e.g. 0.1")
        if self.method not in ("greedy", "prefix", "exact"):
            raise DemoError(f"Invalid method: {self.method!r}; use 'greedy', 'prefix' or 'exact'")
        for key in ("small", "large"):
            try:
                T.parse_size(getattr(self, key))
            except ValueError as err:
                raise DemoError(f"--{key}: {err}") from None

    @property
    def warmup_steps(self) -> int:
        # Algorithm 2 probes for 10% of the horizon; at least 4 probes so APPI is not one sample.
        return self.warmup if self.warmup is not None else max(4 * self.lazy, round(0.1 * self.steps))


# -- output helpers -----------------------------------------------------------------------------


def json_safe(obj: Any) -> Any:
    """``obj`` with tuples as lists, numpy/torch scalars as Python numbers and non-finite floats
    as ``None``, so ``json.dumps(..., allow_nan=False)`` accepts it."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if hasattr(obj, "item") and callable(obj.item):  # numpy / torch scalar
        return json_safe(obj.item())
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return str(obj)


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]], align: str | None = None) -> str:
    """A plain-text table: a header line, a rule, one line per row.

    ``align`` holds one character per column, ``"l"`` or ``"r"`` (default: first column left,
    the others right).
    """
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)
    lines = []
    for j, row in enumerate(cells):
        parts = [c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(row, widths, align, strict=True)]
        lines.append("  ".join(parts).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


def _num(x: float, digits: int = 4) -> str:
    return f"{x:.{digits}g}" if math.isfinite(x) else "nan"


def _size_label(size: str) -> str:
    n_layer, n_embd, _ = T.parse_size(size)
    return f"{n_layer}x{n_embd}"


# -- the pipeline -------------------------------------------------------------------------------


def appi_table(opt) -> list[dict]:
    """One row per group of a probed :class:`GeNAdaPEFT`, in greedy order (then unranked
    groups by name): numel, fraction, APPI, value (APPI x numel, the predicted loss reduction),
    effective lr, probes run, valued (counted in APPI) and accepted (lr fit used), and greedy
    rank (``None`` for groups with no positive APPI)."""
    from .selection import pareto_frontier

    appi, numel, lrs = opt.appi, opt.numel, opt.lrs
    total = sum(numel.values())
    rank = {g: i + 1 for i, g in enumerate(pareto_frontier(appi, numel, method="greedy")[-1].groups)}
    counts = {row["group"]: row for row in probe_summary(opt.history)}
    empty = {"probes": 0, "valued": 0, "accepted": 0}
    return [
        {
            "group": g,
            "numel": numel[g],
            "fraction": numel[g] / total,
            "appi": appi[g],
            "value": appi[g] * numel[g],
            "lr": lrs[g],
            "probes": counts.get(g, empty)["probes"],
            "valued": counts.get(g, empty)["valued"],
            "accepted": counts.get(g, empty)["accepted"],
            "rank": rank.get(g),
        }
        for g in sorted(appi, key=lambda g: (rank.get(g, len(appi) + 1), g))
    ]


def probe_summary(history: Iterable[dict], groups: Iterable[str] = ()) -> list[dict]:
    """What the probes of each group came to, from ``opt.history``.

    A probe is *valued* when its line was a parabola with finite losses (``case`` is not
    ``None``): its PPI counts in APPI. It is *accepted* when its lr fit was used as well.

    Args:
        history: the optimizer's probe records.
        groups: groups to list even without a record, first and in this order; the others
            follow in order of first appearance (default: none)

    Returns:
        list[dict]: per group ``group``, ``probes``, ``valued``, ``accepted``, ``cases``
        (case -> count, valued probes) and ``reasons`` (reason -> count, probes not
        accepted), the counters as plain dicts, most frequent first.
    """

    def empty(g: str) -> dict:
        return {"group": g, "probes": 0, "valued": 0, "accepted": 0, "cases": Counter(), "reasons": Counter()}

    rows = {g: empty(g) for g in groups}
    for record in history:
        g = record["group"]
        if g not in rows:
            rows[g] = empty(g)
        row = rows[g]
        row["probes"] += 1
        if record.get("case") is not None:
            row["valued"] += 1
            row["cases"][record["case"]] += 1
        if record["accepted"]:
            row["accepted"] += 1
        else:
            row["reasons"][str(record.get("reason"))] += 1
    return [
        row | {"cases": dict(row["cases"].most_common()), "reasons": dict(row["reasons"].most_common())}
        for row in rows.values()
    ]


def format_probe_summary(rows: Sequence[dict]) -> str:
    """:func:`probe_summary` as a table: valued/probes, accepted/probes, why not accepted."""
    return format_table(
        ["group", "valued", "accepted", "not accepted because"],
        [
            [
                r["group"],
                f"{r['valued']}/{r['probes']}",
                f"{r['accepted']}/{r['probes']}",
                ", ".join(f"{reason} x{n}" for reason, n in r["reasons"].items()) or "-",
            ]
            for r in rows
        ],
        "lrrl",
    )


def few_probes_message(rows: Sequence[dict], fix: str, minimum: int = MIN_VALUED_PROBES) -> str | None:
    """One line naming the groups with fewer than ``minimum`` valued probes, or ``None``.

    Args:
        rows: :func:`probe_summary` rows.
        fix: what to do about it, e.g. ``"run more --steps"``.
        minimum: valued probes a rank needs (default: :data:`MIN_VALUED_PROBES`)
    """
    few = [r for r in rows if r["valued"] < minimum]
    if not few:
        return None
    listed = ", ".join(f"{r['group']} {r['valued']}/{r['probes']}" for r in few)
    unranked = [r["group"] for r in few if r["valued"] == 0]
    tail = (
        f"; {', '.join(unranked)} had no valued probe, so APPI 0 ranks them last for want of "
        "a measurement, not for lack of influence"
        if unranked
        else ""
    )
    return f"APPI ranks rest on fewer than {minimum} valued probes for {listed} (valued/probes){tail}: {fix}"


def select_or_explain(opt: Any, budget: float, method: str) -> tuple[Any, str | None]:
    """``opt.select(budget, method)`` and, when it is empty, why and the smallest budget that
    is not (the :class:`~adapeft_optim.selection.EmptySelectionWarning`'s text, which the
    caller turns into its error instead of a warning)."""
    from .selection import EmptySelectionWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", EmptySelectionWarning)
        selection = opt.select(budget, method=method)
    empty = [str(w.message) for w in caught if issubclass(w.category, EmptySelectionWarning)]
    for w in caught:  # anything else goes on as it came
        if not issubclass(w.category, EmptySelectionWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if selection.groups:
        return selection, None
    return selection, empty[0] if empty else "no group has a positive APPI"


def run_demo(
    out: str | Path,
    config: DemoConfig | None = None,
    *,
    progress: bool | str = False,
    stream: TextIO | None = None,
    verbose: bool = True,
) -> dict:
    """Run the demo, write its files to ``out`` and return the ``results.json`` content.

    Args:
        out (str or Path): output folder (created).
        config (DemoConfig, optional): the settings (default: ``DemoConfig()``)
        progress (bool or str): ``True`` or ``"bar"``: tqdm bars on stderr; ``"lines"``: a
            line per tenth of each phase on ``stream`` (for logs and pipes); ``False``: none
            (default: False)
        stream (TextIO, optional): where tables and messages go (default: sys.stdout)
        verbose (bool): print phase messages and timings besides the tables (default: True)

    Raises:
        DemoError: a setting that cannot work, e.g. a budget below the most influential group.

    Warns:
        FewProbesWarning: a group has fewer than :data:`MIN_VALUED_PROBES` valued probes.
    """
    import torch

    from .selection import Selection, pareto_frontier

    if progress not in (True, False, "bar", "lines"):
        raise DemoError(f"Invalid progress: {progress!r}; use True/'bar', 'lines' or False")

    config = config or DemoConfig()
    stream = stream or sys.stdout
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    def say(text: str = "") -> None:
        print(text, file=stream, flush=True)

    def note(text: str) -> None:
        if verbose:
            say(text)

    def bar(desc: str) -> T.Progress:
        if progress == "lines":
            return functools.partial(T.LineProgress, desc=desc, stream=stream)
        return desc if progress else None

    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> float:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = now - clock
        clock = now
        return timings[name]

    seed = config.seed
    threads = torch.get_num_threads()
    finetune = T.FINETUNE_TASK
    eval_batch = finetune.eval_batch()

    # 1. pre-trained models --------------------------------------------------------------------
    note(
        f"adapeft demo: Algorithm 2 on the synthetic task (small {_size_label(config.small)} -> "
        f"large {_size_label(config.large)}, {config.steps} steps, budget {_pct(config.budget)}, "
        f"seed {seed}, {threads} torch thread{'s' if threads != 1 else ''})"
    )
    note(f"pre-trained weights cache: {T.cache_dir()}")
    bases = {}
    for role in ("small", "large"):
        size = getattr(config, role)
        bases[role] = T.pretrained_model(size, steps=config.pretrain_steps, progress=bar(f"pre-train {role}"))
        note(f"  {role} model {_size_label(size)}: ready in {lap('pretrain_' + role):.1f}s")
    models_info = {}
    for role, base in bases.items():
        models_info[role] = {
            "size": getattr(config, role),
            "layers_width_heads": list(T.parse_size(getattr(config, role))),
            "base_parameters": T.count_parameters(base)[1],
            "task_A": T.evaluate(base, T.PRETRAIN_TASK),
            "task_B_before": T.evaluate(base, finetune, eval_batch),
        }

    # 2. warm-up with probes on the small model --------------------------------------------------
    small = T.add_lora(copy.deepcopy(bases["small"]), seed=seed, train_all=True)
    warmup = config.warmup_steps
    opt = T.probe(
        small,
        finetune,
        warmup,
        lazy=config.lazy,
        seed=seed,
        batch_size=config.batch_size,
        progress=bar("warm-up (probes)"),
    )
    probes = len(opt.history)
    accepted = sum(1 for r in opt.history if r["accepted"])
    valued = sum(1 for r in opt.history if r["case"] is not None)
    note(
        f"warm-up: {warmup} steps on the small model with LoRA, every group trainable, probing "
        f"every {config.lazy} steps: {valued}/{probes} probes valued, {accepted} accepted "
        f"({lap('warmup'):.1f}s)"
    )
    if valued == 0:
        raise DemoError(
            f"no probe was valued in {warmup} warm-up steps, so there is no APPI to select from; "
            f"use more --steps (or --warmup) or a lower --lazy"
        )
    appi, numel = opt.appi, opt.numel
    summary = probe_summary(opt.history, appi)

    # 3. APPI table and greedy frontier ---------------------------------------------------------
    frontier = pareto_frontier(appi, numel, method="greedy")
    frontier_exact = pareto_frontier(appi, numel, method="exact")
    appi_rows = appi_table(opt)
    say()
    say("APPI after the warm-up (small model; value = APPI x params, the predicted loss reduction)")
    say(
        format_table(
            ["rank", "group", "params", "% params", "APPI", "value", "Newton lr", "valued"],
            [
                [
                    r["rank"] or "-",
                    r["group"],
                    f"{r['numel']:,}",
                    _pct(r["fraction"]),
                    _num(r["appi"]),
                    _num(r["value"]),
                    _num(r["lr"], 3),
                    f"{r['valued']}/{r['probes']}",
                ]
                for r in appi_rows
            ],
            "rlrrrrrr",
        )
    )
    say()
    say("probes per group (valued: counted in APPI; accepted: its lr fit was used)")
    say(format_probe_summary(summary))
    few = few_probes_message(summary, "use more --steps (or --warmup) or a lower --lazy for a ranking to trust")
    if few:
        warnings.warn(few, FewProbesWarning, stacklevel=2)
    say()
    say("greedy frontier (nested prefixes by APPI; exact = also on the exact Pareto frontier)")
    exact_sets = {frozenset(p.groups) for p in frontier_exact}
    say(
        format_table(
            ["k", "groups", "% params", "predicted value", "exact"],
            [
                [
                    k,
                    "+".join(p.groups) or "(none)",
                    _pct(p.fraction),
                    _num(p.value),
                    "yes" if frozenset(p.groups) in exact_sets else "no",
                ]
                for k, p in enumerate(frontier)
            ],
            "rlrrr",
        )
    )

    # 4. selection and transfer ---------------------------------------------------------------
    selection, empty = select_or_explain(opt, config.budget, config.method)
    if not selection.groups:
        raise DemoError(f"--budget {config.budget:g} selects no group: {empty}")
    selection.save(out / "selection.json")
    say()
    say(
        f"selection at budget {_pct(config.budget)} ({config.method}): "
        f"{'+'.join(selection.groups)} = {selection.num_selected:,} params, "
        f"{_pct(selection.fraction)} of the small model -> {out / 'selection.json'}"
    )

    runs: list[tuple[str, tuple[str, ...]]] = [("AdaPEFT", tuple(selection.groups))]
    runs += [(name, groups) for name, groups in T.RECIPES.items()]
    comparison = []
    for name, groups in runs:
        large = T.add_lora(copy.deepcopy(bases["large"]), seed=seed, train_all=False)
        result = T.train(
            large,
            finetune,
            config.steps,
            groups=groups,
            seed=seed,
            batch_size=config.batch_size,
            progress=bar(f"{name} (large)"),
            eval_batch=eval_batch,
        )
        predicted = Selection.from_groups([g for g in groups if g in numel], numel, appi)
        comparison.append(
            {
                "name": name,
                "groups": list(groups),
                "trainable": result["trainable"],
                "total": result["total"],
                "fraction": result["fraction"],
                "loss": result["loss"],
                "accuracy": result["accuracy"],
                "train_loss": result["train_loss"],
                "lr": result["lr"],
                "small_fraction": predicted.fraction,
                "predicted_value": predicted.value,
            }
        )
        note(
            f"  trained {name} on the large model: loss {result['loss']:.4f}, accuracy "
            f"{result['accuracy']:.3f} ({lap('train_' + name):.1f}s)"
        )
        del large
    before = models_info["large"]["task_B_before"]
    say()
    say(
        f"fine-tuning the large model ({_size_label(config.large)}) on task B, {config.steps} "
        f"steps each, same batches (eval: {T.EVAL_SIZE} held-out sequences, answer tokens)"
    )
    say(
        format_table(
            ["recipe", "groups", "trainable", "% trainable", "eval loss", "accuracy", "lr"],
            [
                [
                    c["name"],
                    "+".join(c["groups"]),
                    f"{c['trainable']:,}",
                    _pct(c["fraction"]),
                    f"{c['loss']:.4f}",
                    f"{c['accuracy']:.3f}",
                    f"{c['lr']:g}",
                ]
                for c in comparison
            ]
            + [
                [
                    "(pre-trained, no fine-tuning)",
                    "-",
                    "0",
                    _pct(0.0),
                    f"{before['loss']:.4f}",
                    f"{before['accuracy']:.3f}",
                    "-",
                ]
            ],
            "llrrrrr",
        )
    )
    best = min(comparison, key=lambda c: (c["loss"], c["fraction"]))
    dominated_by = [
        c["name"]
        for c in comparison[1:]
        if c["fraction"] <= comparison[0]["fraction"] and c["loss"] < comparison[0]["loss"]
    ]
    say(
        f"lowest eval loss: {best['name']}; recipes with fewer parameters and lower loss than "
        f"AdaPEFT: {', '.join(dominated_by) if dominated_by else 'none'}"
    )

    # 5. files -----------------------------------------------------------------------------------
    files = ["results.json", "selection.json"]
    if config.plots:
        files += _write_plots(out, opt, frontier, comparison, selection, config.budget)
        note(f"plots written ({lap('plots'):.1f}s)")
    results = json_safe(
        {
            "config": dataclasses.asdict(config) | {"warmup_steps": warmup, "threads": threads},
            "task": {
                "pretrain": dataclasses.asdict(T.PRETRAIN_TASK),
                "finetune": dataclasses.asdict(finetune),
                "vocab_size": T.VOCAB_SIZE,
                "seq_len": T.SEQ_LEN,
                "answer_length": T.ANSWER_LENGTH,
                "eval_size": T.EVAL_SIZE,
            },
            "lrs": {"peft": T.PEFT_LR, "full": T.FULL_LR, "probe": T.PROBE_LR},
            "models": models_info,
            "warmup": {
                "steps": warmup,
                "lazy": config.lazy,
                "probes": probes,
                "valued": valued,
                "accepted": accepted,
                "per_group": summary,
                "task_B_after": T.evaluate(small, finetune, eval_batch),
            },
            "appi": appi_rows,
            "frontier": [{"fraction": p.fraction, "value": p.value, "groups": list(p.groups)} for p in frontier],
            "frontier_exact": [
                {"fraction": p.fraction, "value": p.value, "groups": list(p.groups)} for p in frontier_exact
            ],
            "selection": selection.to_dict(),
            "comparison": comparison,
            "history": opt.history,
            "files": sorted(files),
        }
    )
    (out / "results.json").write_text(json.dumps(results, indent=2, allow_nan=False) + "\n", encoding="utf-8")
    total_time = sum(timings.values())
    note(f"wrote {', '.join(sorted(files))} to {out} (total {total_time:.1f}s)")
    return results


def _write_plots(
    out: Path, opt: Any, frontier: list, comparison: list[dict], selection: Any, budget: float
) -> list[str]:
    from .plots import plot_appi_curves, plot_frontier, plot_ppi_heatmap

    plot_ppi_heatmap(
        opt.history,
        out / "ppi_heatmap.png",
        title="influence per probe step (small model, warm-up)",
    )
    plot_appi_curves(opt.history, out / "appi_curves.png", title="APPI during the warm-up (small model)")
    recipes = {c["name"]: (c["small_fraction"], c["predicted_value"]) for c in comparison[1:]}
    plot_frontier(
        {"greedy APPI frontier": frontier},
        out / "frontier.png",
        recipes=recipes,
        budget=budget,
        selection=selection,
        title="predicted loss reduction vs parameters (small model)",
    )

    # log10 of the loss: the good recipes differ by factors near zero, invisible on a linear axis.
    def y(c: dict) -> float:
        return math.log10(max(c["loss"], 1e-12))

    ada = comparison[0]
    chosen = "+".join(ada["groups"])
    if len(chosen) > 30:
        chosen = f"{len(ada['groups'])} groups"
    plot_frontier(
        {f"AdaPEFT ({chosen})": [(ada["fraction"], y(ada), ada["groups"])]},
        out / "comparison.png",
        recipes={c["name"]: (c["fraction"], y(c)) for c in comparison[1:]},
        annotate=False,
        ylabel="log10 eval loss on task B (lower is better)",
        title="large model after fine-tuning: loss vs trainable parameters",
    )
    return ["ppi_heatmap.png", "appi_curves.png", "frontier.png", "comparison.png"]
