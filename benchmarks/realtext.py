"""Byte-level LM fine-tuning on real English text for the optimizer benchmark (issue 10, item 4).

Nothing is downloaded: the corpus is the docstrings of a fixed list of Python standard-library
modules, collected with :mod:`inspect` (so it is the text this Python ships). Modules ``a``-``m``
pre-train a small GPT-2 (cached as safetensors under ``task.cache_dir() / "bench"``); modules
``n``-``z`` are the fine-tuning domain, every 10th docstring held out for evaluation.

The pieces (used by ``test_bench_realtext.py``):

- :func:`corpus` / :class:`Data`: the text, the splits, seeded training and probe batches;
- :func:`pretrained_state`: the pre-trained weights (trained once, then read from the cache);
- :func:`build_model`: the pre-trained GPT-2 wrapped with peft LoRA, every parameter trainable
  (``"all"``: 7 groups, untied head) or only the LoRA factors (``"lora"``);
- :func:`finetune`: one fine-tuning run of one optimizer, with a held-out loss curve over
  training seconds (evaluation time excluded) and the optimizer's own read-outs.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import inspect
import io
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from adapeft_optim.loop import run_steps

SEQ = 128  # bytes per sequence (= n_positions)
EVAL_CHUNKS = 96  # held-out sequences (non-overlapping SEQ-byte chunks)
HOLDOUT_EVERY = 10  # every 10th fine-tuning docstring is held out
LORA_RANK = 8
LORA_TARGETS = ("c_attn", "c_proj")
N_LAYER, N_EMBD, N_HEAD = 4, 128, 4
PRETRAIN_STEPS = 1500
PRETRAIN_BATCH = 16
PRETRAIN_LR = 2e-3
_FORMAT_VERSION = 1

# Standard-library modules whose docstrings make the corpus. Sorted; a module this Python lacks
# (e.g. built without sqlite3) is skipped, and the corpus hash in the results says which text ran.
PRETRAIN_MODULES = (
    "abc",
    "argparse",
    "array",
    "ast",
    "asyncio",
    "base64",
    "bdb",
    "binascii",
    "bisect",
    "bz2",
    "calendar",
    "cmath",
    "cmd",
    "codecs",
    "collections",
    "colorsys",
    "concurrent.futures",
    "configparser",
    "contextlib",
    "copy",
    "csv",
    "dataclasses",
    "datetime",
    "decimal",
    "difflib",
    "dis",
    "email.message",
    "enum",
    "filecmp",
    "fileinput",
    "fnmatch",
    "fractions",
    "ftplib",
    "functools",
    "gc",
    "getopt",
    "gettext",
    "glob",
    "gzip",
    "hashlib",
    "heapq",
    "hmac",
    "html",
    "http.client",
    "http.cookiejar",
    "http.server",
    "imaplib",
    "importlib",
    "inspect",
    "io",
    "ipaddress",
    "itertools",
    "json",
    "keyword",
    "linecache",
    "locale",
    "logging",
    "lzma",
    "mailbox",
    "math",
    "mimetypes",
    "mmap",
    "modulefinder",
    "multiprocessing",
)
FINETUNE_MODULES = (
    "netrc",
    "numbers",
    "operator",
    "optparse",
    "os",
    "pathlib",
    "pdb",
    "pickle",
    "pickletools",
    "pkgutil",
    "platform",
    "plistlib",
    "poplib",
    "pprint",
    "profile",
    "pstats",
    "queue",
    "quopri",
    "random",
    "re",
    "reprlib",
    "sched",
    "secrets",
    "selectors",
    "shelve",
    "shlex",
    "shutil",
    "signal",
    "smtplib",
    "socket",
    "socketserver",
    "sqlite3",
    "ssl",
    "stat",
    "statistics",
    "string",
    "struct",
    "subprocess",
    "symtable",
    "sys",
    "tarfile",
    "tempfile",
    "textwrap",
    "threading",
    "time",
    "timeit",
    "tokenize",
    "trace",
    "traceback",
    "types",
    "typing",
    "unicodedata",
    "unittest",
    "urllib.parse",
    "urllib.request",
    "uuid",
    "warnings",
    "wave",
    "weakref",
    "xml.dom.minidom",
    "xml.etree.ElementTree",
    "zipfile",
    "zlib",
    "zoneinfo",
)


# -- the corpus -------------------------------------------------------------------------------


def _docstrings(name: str) -> list[str]:
    """``"<qualified name>\\n<docstring>"`` of a module, its public classes and functions (and
    their public methods), in sorted order."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            mod = importlib.import_module(name)
        except ImportError:
            return []
    out = []
    doc = inspect.getdoc(mod)
    if doc:
        out.append(f"{name}\n{doc}")
    for attr, obj in sorted(vars(mod).items()):
        if attr.startswith("_") or getattr(obj, "__module__", None) != mod.__name__:
            continue
        if not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        doc = inspect.getdoc(obj)
        if doc:
            out.append(f"{name}.{attr}\n{doc}")
        if inspect.isclass(obj):
            for member, value in sorted(vars(obj).items()):
                if member.startswith("_"):
                    continue
                if inspect.isroutine(value) or isinstance(value, (property, classmethod, staticmethod)):
                    doc = inspect.getdoc(value)
                    if doc:
                        out.append(f"{name}.{attr}.{member}\n{doc}")
    return out


@dataclass
class Corpus:
    pretrain: bytes  # modules a-m
    finetune_train: bytes  # modules n-z, all but every HOLDOUT_EVERY-th docstring
    finetune_eval: bytes  # modules n-z, every HOLDOUT_EVERY-th docstring
    sha256: str
    modules: dict[str, int] = field(default_factory=dict)  # module -> docstrings used

    def describe(self) -> dict[str, Any]:
        return {
            "source": "docstrings of Python %s standard-library modules (inspect.getdoc)"
            % (".".join(map(str, __import__("sys").version_info[:3]))),
            "sha256": self.sha256,
            "pretrain_bytes": len(self.pretrain),
            "finetune_train_bytes": len(self.finetune_train),
            "finetune_eval_bytes": len(self.finetune_eval),
            "pretrain_modules": sum(1 for m in self.modules if m in PRETRAIN_MODULES and self.modules[m]),
            "finetune_modules": sum(1 for m in self.modules if m in FINETUNE_MODULES and self.modules[m]),
        }


_CORPUS: Corpus | None = None


def corpus() -> Corpus:
    """The corpus (built once per process). A docstring seen before (inherited, re-exported) is
    dropped, so no text of the held-out split is also in the pre-training or training split."""
    global _CORPUS
    if _CORPUS is not None:
        return _CORPUS
    seen = set()
    parts: dict[str, list[str]] = {"pre": [], "ft": []}
    modules = {}
    for split, names in (("pre", PRETRAIN_MODULES), ("ft", FINETUNE_MODULES)):
        for name in names:
            docs = [d for d in _docstrings(name) if d not in seen]
            seen.update(docs)
            parts[split].extend(docs)
            modules[name] = len(docs)
    sep = "\n\n"
    train = [d for i, d in enumerate(parts["ft"]) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
    held = [d for i, d in enumerate(parts["ft"]) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    pre, ft_train, ft_eval = (sep.join(x).encode("utf-8") for x in (parts["pre"], train, held))
    digest = hashlib.sha256(b"\0".join((pre, ft_train, ft_eval))).hexdigest()
    _CORPUS = Corpus(pre, ft_train, ft_eval, digest, modules)
    return _CORPUS


def _as_tensor(text: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(text), dtype=torch.uint8).long()


class Batch(dict):
    """A batch for ``model(**batch)``; ``.to()`` for gen-optim's ``task="NLU"`` loop."""

    def to(self, device):  # noqa: D401 - mirrors BatchEncoding.to
        return Batch({k: v.to(device) for k, v in self.items()})


def windows(text: torch.Tensor, starts: torch.Tensor) -> Batch:
    x = text[starts.unsqueeze(1) + torch.arange(SEQ)]
    return Batch(input_ids=x, labels=x)


class ProbeStream:
    """An endless, seeded stream of random training windows (GeN's second iterator): batches
    the gradient of the same step has not seen. Each ``iter()`` starts the same stream over."""

    def __init__(self, text: torch.Tensor, seed: int, batch: int) -> None:
        self.text, self.seed, self.batch = text, seed, batch

    def __iter__(self) -> Iterator[Batch]:
        g = torch.Generator().manual_seed(self.seed)
        high = len(self.text) - SEQ
        while True:
            yield windows(self.text, torch.randint(0, high, (self.batch,), generator=g))


class Data:
    """Tensors of the splits, the held-out chunks and the seeded batch streams."""

    def __init__(self, c: Corpus | None = None) -> None:
        c = c or corpus()
        self.corpus = c
        self.pretrain = _as_tensor(c.pretrain)
        self.train = _as_tensor(c.finetune_train)
        held = _as_tensor(c.finetune_eval)
        n = min(EVAL_CHUNKS, len(held) // SEQ)
        self.eval_ids = held[: n * SEQ].view(n, SEQ)
        # The pre-training split's own held-out: its last 5%, for the pre-training report.
        cut = int(len(self.pretrain) * 0.95)
        self.pretrain_train, pre_held = self.pretrain[:cut], self.pretrain[cut:]
        m = min(EVAL_CHUNKS, len(pre_held) // SEQ)
        self.pretrain_eval_ids = pre_held[: m * SEQ].view(m, SEQ)

    def train_batches(self, seed: int, steps: int, batch: int) -> list[Batch]:
        """The gradient batches of a run: the same for every optimizer of a seed."""
        g = torch.Generator().manual_seed(1_000 + seed)
        starts = torch.randint(0, len(self.train) - SEQ, (steps, batch), generator=g)
        return [windows(self.train, s) for s in starts]

    def probe_stream(self, seed: int, batch: int) -> ProbeStream:
        return ProbeStream(self.train, 2_000 + seed, batch)


@torch.no_grad()
def held_out_loss(model: torch.nn.Module, ids: torch.Tensor, batch: int = 32) -> float:
    """Mean next-byte cross-entropy (nats per byte) over the held-out chunks."""
    total = 0.0
    for i in range(0, len(ids), batch):
        x = ids[i : i + batch]
        total += model(input_ids=x, labels=x).loss.item() * len(x)
    return total / len(ids)


# -- the pre-trained model --------------------------------------------------------------------


def gpt2_config():
    from transformers import GPT2Config

    return GPT2Config(
        n_layer=N_LAYER,
        n_embd=N_EMBD,
        n_head=N_HEAD,
        vocab_size=256,
        n_positions=SEQ,
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )


def _cache_path(c: Corpus, steps: int) -> Path:
    from adapeft_optim.task import cache_dir

    key = f"{c.sha256[:12]}-{N_LAYER}x{N_EMBD}h{N_HEAD}-s{steps}-b{PRETRAIN_BATCH}-v{_FORMAT_VERSION}"
    return cache_dir() / "bench" / f"realtext-gpt2-{key}.safetensors"


def pretrained_state(data: Data, steps: int = PRETRAIN_STEPS, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Weights of a GPT-2 pre-trained on modules a-m (seed 0, AdamW, warm-up + cosine), from the
    cache when there; plus its held-out losses on both domains and how it was made."""
    from safetensors.torch import load_file, save_file
    from transformers import GPT2LMHeadModel

    path = _cache_path(data.corpus, steps)
    state = None
    if path.exists():
        try:
            state = load_file(os.fspath(path))
        except Exception as err:  # unreadable cache: rebuild
            log(f"realtext: cache {path} unreadable ({err}); pre-training again")
    seconds = 0.0
    if state is None:
        torch.manual_seed(0)
        model = GPT2LMHeadModel(gpt2_config()).train()
        opt = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR, weight_decay=0.01)
        warm = max(1, steps // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda t: min(1.0, (t + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))
        )
        g = torch.Generator().manual_seed(0)
        text = data.pretrain_train
        start = time.perf_counter()
        for t in range(steps):
            b = windows(text, torch.randint(0, len(text) - SEQ, (PRETRAIN_BATCH,), generator=g))
            loss = model(**b).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
            if t % 250 == 0 or t == steps - 1:
                log(f"realtext: pre-training step {t}/{steps} loss {loss.item():.3f}")
        seconds = time.perf_counter() - start
        state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file(state, os.fspath(tmp))
            os.replace(tmp, path)
        except OSError as err:
            warnings.warn(f"could not cache the pre-trained model in {path.parent} ({err})", RuntimeWarning)
        state = load_file(os.fspath(path)) if path.exists() else state
    model = GPT2LMHeadModel(gpt2_config())
    model.load_state_dict(state)
    model.eval()
    return {
        "state": state,
        "path": os.fspath(path),
        "steps": steps,
        "pretrain_seconds": seconds,
        "pretrain_domain_loss": held_out_loss(model, data.pretrain_eval_ids),
        "finetune_domain_loss": held_out_loss(model, data.eval_ids),
        "params": sum(p.numel() for p in model.parameters()),
    }


def build_model(state: dict[str, torch.Tensor], setting: str, seed: int) -> torch.nn.Module:
    """The pre-trained GPT-2 with LoRA (rank 8 on ``LORA_TARGETS``, init seeded by ``seed``);
    ``setting="all"``: every parameter trainable (7 groups), ``"lora"``: only the LoRA factors."""
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2LMHeadModel

    base = GPT2LMHeadModel(gpt2_config())
    base.load_state_dict(state)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get_peft_model(
            base,
            LoraConfig(r=LORA_RANK, lora_alpha=2 * LORA_RANK, target_modules=list(LORA_TARGETS), fan_in_fan_out=True),
        )
    if setting == "all":
        for p in model.parameters():
            p.requires_grad_(True)
    elif setting != "lora":
        raise ValueError(f"setting must be 'all' or 'lora', got {setting!r}")
    return model.train()


# -- one fine-tuning run ----------------------------------------------------------------------

FAMILIES = ("AdamW", "GeNAdaPEFT", "gen-optim", "Prodigy", "D-Adapt Adam", "SF-AdamW")


def _is_guard_warning(w: warnings.WarningMessage) -> bool:
    return issubclass(w.category, RuntimeWarning) and str(w.message).startswith("GeNAdaPEFT step")


def finetune(
    state: dict[str, torch.Tensor],
    data: Data,
    setting: str,
    family: str,
    lr: float,
    *,
    seed: int,
    steps: int,
    batch: int,
    lazy: int = 8,
    evals: int = 6,
    gen_kwargs: dict[str, Any] | None = None,
    same_batch_closure: bool = False,
    track_ceiling: bool = False,
) -> dict[str, Any]:
    """Fine-tune with one optimizer on the seed's batches; return the held-out loss curve
    (``curve``: [training seconds, step, loss]), ``final`` and the optimizer's read-outs."""
    from adapeft_optim import GeNAdaPEFT, group_parameters

    model = build_model(state, setting, seed)
    params = [p for p in model.parameters() if p.requires_grad]
    batches = data.train_batches(seed, steps, batch)
    probe = data.probe_stream(seed, batch)
    current: list[Batch] = [batches[0]]
    opt: Any
    before_eval: Callable[[], None] = lambda: None
    after_eval: Callable[[], None] = lambda: None
    extra_step: Callable[[int], None] | None = None
    out: dict[str, Any] = {"setting": setting, "family": family, "lr": lr, "seed": seed, "steps": steps, "batch": batch}
    if family == "AdamW":
        opt = torch.optim.AdamW(params, lr=lr)
    elif family == "GeNAdaPEFT":
        kwargs = dict(lazy=lazy)
        kwargs.update(gen_kwargs or {})
        if same_batch_closure:
            opt = GeNAdaPEFT(
                torch.optim.AdamW(params, lr=lr),
                closure=lambda: model(**current[0]).loss,
                groups=group_parameters(model),
                **kwargs,
            )
        else:
            opt = GeNAdaPEFT(
                torch.optim.AdamW(params, lr=lr),
                closure=lambda b: model(**b).loss,
                probe_data=probe,
                groups=group_parameters(model),
                **kwargs,
            )
    elif family == "gen-optim":
        from GeN import lr_parabola

        opt = torch.optim.AdamW(params, lr=lr)
        tr_iter = iter(probe)
        gen_log = io.StringIO()
        out["gen_calls"] = 0

        def gen_step(i: int) -> None:  # README loop: between backward() and step()
            if (i + 1) % lazy == 0:
                with contextlib.redirect_stdout(gen_log):
                    lr_parabola(model, opt, tr_iter=tr_iter, device="cpu", task="NLU", scale=1.0)
                out["gen_calls"] += 1

        extra_step = gen_step
    elif family == "Prodigy":
        from prodigyopt import Prodigy

        opt = Prodigy(params, lr=lr)
    elif family == "D-Adapt Adam":
        from dadaptation import DAdaptAdam

        opt = DAdaptAdam(params, lr=lr)
    elif family == "SF-AdamW":
        from schedulefree import AdamWScheduleFree

        opt = AdamWScheduleFree(params, lr=lr)
        opt.train()
        before_eval, after_eval = opt.eval, opt.train
    else:
        raise ValueError(f"unknown optimizer family {family!r}")

    every = max(1, steps // evals) if evals else steps
    curve: list[list[float]] = []
    train_losses: list[float] = []
    ceiling = 0.0
    seconds = 0.0

    def evaluate(step: int) -> float:
        before_eval()
        loss = held_out_loss(model, data.eval_ids)
        after_eval()
        curve.append([seconds, step, loss])
        return loss

    evaluate(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        for i, b in enumerate(batches):
            current[0] = b
            start = time.perf_counter()
            loss = model(**b).loss
            loss.backward()
            if extra_step is not None:
                extra_step(i)
            opt.step()
            opt.zero_grad(set_to_none=True)
            seconds += time.perf_counter() - start
            train_losses.append(loss.item())
            if track_ceiling:
                ceiling = max(ceiling, max(v / lr for v in opt.newton_lrs.values()))
            if (i + 1) % every == 0 and i + 1 < steps:
                evaluate(i + 1)
    final = evaluate(steps)
    out.update(
        final=final,
        curve=curve,
        seconds=seconds,
        train_losses=train_losses,
        finite=all(math.isfinite(x) for x in train_losses) and math.isfinite(final),
        guard_warnings=sum(1 for w in caught if _is_guard_warning(w)),
    )
    if family == "GeNAdaPEFT":
        hist = opt.history
        out.update(
            lrs=opt.lrs,
            newton_lrs=opt.newton_lrs,
            appi=opt.appi,
            probes=len({r["step"] for r in hist}),
            fits=len(hist),
            accepted=sum(1 for r in hist if r["accepted"]),
            accepted_by_group={g: sum(1 for r in hist if r["group"] == g and r["accepted"]) for g in opt.names},
            max_factor=max(v / lr for v in opt.newton_lrs.values()),
            max_lr_factor=opt.max_lr_factor,
            joint_t=[r["joint_t"] for r in hist if r["group"] == opt.names[0]],
            joint_scale=[r["joint_scale"] for r in hist if r["group"] == opt.names[0]],
            guard_steps=sorted({r["step"] for r in hist if r.get("guard")}),
            reasons=_count(r["reason"] for r in hist if not r["accepted"]),
            b_records=[(r["step"], r["group"], r["b"], r["accepted"]) for r in hist],
        )
        if track_ceiling:
            out["max_factor_seen"] = ceiling
    elif family == "gen-optim":
        out["final_lr"] = opt.param_groups[0]["lr"]
        out["gen_messages"] = gen_log.getvalue().count("\n")
    elif family in ("Prodigy", "D-Adapt Adam"):
        g = opt.param_groups[0]
        out["final_lr"] = g["d"] * g["lr"]  # the effective step size d·lr they adapted
    else:
        out["final_lr"] = opt.param_groups[0]["lr"]
    return out


def _count(items) -> dict[str, int]:
    counts: dict[str, int] = {}
    for x in items:
        counts[str(x)] = counts.get(str(x), 0) + 1
    return counts


def b_ratio_run(
    state: dict[str, torch.Tensor],
    data: Data,
    lr: float,
    *,
    seed: int,
    steps: int,
    batch: int,
    lazy: int = 8,
    setting: str = "all",
) -> dict[str, Any]:
    """Slope b on the step's own batch vs on a fresh batch, at the same weights and direction.

    Two copies of the model run bare AdamW in lockstep on the same batches; each has a
    GeNAdaPEFT with ``adapt_lr=False`` (probes only; the trajectory is bare AdamW bit for bit),
    one probing on the current batch, one on the probe stream. Their history records at the same
    step hold b of the same direction at the same weights; the ratio is per group and probe."""
    from adapeft_optim import GeNAdaPEFT, group_parameters

    models = [build_model(state, setting, seed) for _ in range(2)]
    batches = data.train_batches(seed, steps, batch)
    current = [batches[0]]
    m_same, m_fresh = models
    opts = [
        GeNAdaPEFT(
            torch.optim.AdamW([p for p in m_same.parameters() if p.requires_grad], lr=lr),
            closure=lambda: m_same(**current[0]).loss,
            groups=group_parameters(m_same),
            lazy=lazy,
            adapt_lr=False,
        ),
        GeNAdaPEFT(
            torch.optim.AdamW([p for p in m_fresh.parameters() if p.requires_grad], lr=lr),
            closure=lambda b: m_fresh(**b).loss,
            probe_data=data.probe_stream(seed, batch),
            groups=group_parameters(m_fresh),
            lazy=lazy,
            adapt_lr=False,
        ),
    ]
    for b in batches:
        current[0] = b
        for m, o in zip(models, opts):
            run_steps(m, o, [b], 1)
    drift = max(float((p - q).abs().max()) for p, q in zip(m_same.parameters(), m_fresh.parameters()))
    ratios: dict[str, list[float]] = {}
    both_accepted: dict[str, list[float]] = {}
    pairs: dict[str, list[list[float]]] = {}  # [b same batch, b fresh batch] of every probe
    for rs, rf in zip(opts[0].history, opts[1].history):
        assert (rs["step"], rs["group"]) == (rf["step"], rf["group"])
        if math.isfinite(rs["b"]) and math.isfinite(rf["b"]):
            pairs.setdefault(rs["group"], []).append([rs["b"], rf["b"]])
        if rf["b"] > 0 and math.isfinite(rs["b"]):
            ratios.setdefault(rs["group"], []).append(rs["b"] / rf["b"])
            if rs["accepted"] and rf["accepted"]:
                both_accepted.setdefault(rs["group"], []).append(rs["b"] / rf["b"])
    return {
        "lr": lr,
        "seed": seed,
        "steps": steps,
        "lazy": lazy,
        "trajectory_drift": drift,
        "ratios": ratios,
        "ratios_both_accepted": both_accepted,
        "pairs": pairs,
        # Unconditioned: mean b over every probe (a fresh b is ≤ 0 on about a third of them).
        "ratio_of_means": {
            g: sum(x for x, _ in v) / sum(y for _, y in v) for g, v in pairs.items() if sum(y for _, y in v) > 0
        },
        "fresh_b_negative": sum(1 for r in opts[1].history if not r["b"] > 0),
        "same_b_negative": sum(1 for r in opts[0].history if not r["b"] > 0),
    }
