"""The model of ``adapeft select``: a local Hugging Face folder loaded for causal language
modelling or sequence classification, with checks that name what is wrong (no config, no
weights, an unknown type, an encoder or a head without weights as a language model), its
tokenizer, and peft LoRA adapters on its linear layers. transformers and peft are imported
inside the functions (the ``hf`` extra)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from .common import CLIError

__all__ = ["add_lora", "load_model", "load_tokenizer"]

# Files any of which makes a folder hold a tokenizer AutoTokenizer can load.
_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "tokenizer.model",
    "sentencepiece.bpe.model",
)
_WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def load_model(folder: str, classification: bool, classes: list[str] | None):
    """The model in ``folder``: a sequence classifier over ``classes``, else a causal LM."""
    model_type = _model_type(folder)
    config = _auto_config(folder, model_type)
    if classification:
        config.num_labels = len(classes)
        config.id2label = dict(enumerate(classes))
        config.label2id = {c: i for i, c in enumerate(classes)}
    model, info = _from_pretrained(folder, config, classification, model_type)
    if not classification:
        _check_language_model(model, info, folder, model_type)
    return model


def _model_type(folder: str) -> str:
    """The ``model_type`` of the folder's ``config.json`` (checked: folder and file are there)."""
    path = Path(folder)
    if not path.exists():
        raise CLIError(f"model folder {folder} does not exist")
    if not path.is_dir():
        raise CLIError(f"--model {folder} is not a folder; pass the folder written by model.save_pretrained()")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise CLIError(
            f"{folder} has no config.json: not a Hugging Face model folder (write one with "
            f"model.save_pretrained('{folder}'))"
        )
    try:
        raw = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CLIError(f"cannot read {config_file}: {err}") from None
    model_type = raw.get("model_type") if isinstance(raw, dict) else None
    if not model_type:
        raise CLIError(f"{config_file} has no 'model_type'; re-save the model with save_pretrained()")
    return model_type


def _auto_config(folder: str, model_type: str):
    """transformers' config of the folder (checked: the type is known, weights are there)."""
    import transformers
    from transformers import AutoConfig

    config_file = Path(folder) / "config.json"
    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True)
    except (ValueError, KeyError):
        raise CLIError(
            f"unknown model type {model_type!r} in {config_file}: transformers "
            f"{transformers.__version__} "
            f"does not know it (upgrade transformers, or fix model_type)"
        ) from None
    except OSError as err:
        raise CLIError(f"cannot load {config_file}: {str(err).splitlines()[0]}") from None
    if not any((Path(folder) / name).is_file() for name in _WEIGHT_FILES):
        raise CLIError(
            f"{folder} has no weights ({' / '.join(_WEIGHT_FILES[::2])}); save the model with "
            f"model.save_pretrained('{folder}')"
        )
    return config


def _from_pretrained(folder: str, config, classification: bool, model_type: str):
    """``(model, loading info)`` with transformers' notices and progress bars silenced."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    if classification:
        auto, kind = AutoModelForSequenceClassification, "sequence classification"
    else:
        auto, kind = AutoModelForCausalLM, "causal language modelling"
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()  # "newly initialised classifier" notices are expected here
    hf_logging.disable_progress_bar()
    try:
        return auto.from_pretrained(
            folder,
            config=config,
            local_files_only=True,
            ignore_mismatched_sizes=True,
            output_loading_info=True,
        )
    except ValueError as err:
        if "Unrecognized configuration class" in str(err):
            raise CLIError(
                f"model type {model_type!r} has no {kind} model in transformers; "
                + (
                    "use a file without labels for language modelling"
                    if classification
                    else "use a file with a 'label' column for classification"
                )
            ) from None
        raise CLIError(f"cannot load the model from {folder}: {str(err).splitlines()[0]}") from None
    except OSError as err:
        raise CLIError(f"cannot load the model weights from {folder}: {str(err).splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _check_language_model(model, info: dict, folder: str, model_type: str) -> None:
    """A causal LM must attend backwards only and have its head's weights."""
    # transformers' own notices (hidden in _from_pretrained) would only hint at these two; say them.
    if _attends_ahead(model):
        raise CLIError(
            f"{folder} holds a {model_type!r} model whose attention is bidirectional (an "
            f"encoder): as a language model every position would see the next token it is "
            f"asked to predict, with a new, untrained head; give --label-column LABEL for "
            f"sequence classification with an encoder, or use a causal language model "
            f"(GPT-2, Llama, ...) for text alone"
        )
    missing = _missing_head(model, info.get("missing_keys", ()))
    if missing:
        raise CLIError(
            f"{folder} has no weights for the language-model head ({', '.join(missing)}), "
            f"which would start from random values and dominate every probe; save the model "
            f"with its head (AutoModelForCausalLM ... .save_pretrained()), or give "
            f"--label-column LABEL for sequence classification"
        )
    if getattr(model, "loss_type", None) is None:
        model.loss_type = "ForCausalLM"  # what transformers falls back to, minus its warning


def _attends_ahead(model) -> bool:
    """Whether the first position's output depends on a later token: bidirectional attention.

    Two sequences that differ from the second token on go through the model; under a causal
    mask the first position's logits are the same (bit for bit on CPU: the masked scores are
    exactly zero after the softmax); an encoder's are not.
    """
    import torch

    vocab = model.get_input_embeddings().num_embeddings
    length = 4
    first = torch.arange(length) % vocab
    second = first.clone()
    second[1:] = (first[1:] + length) % vocab
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            logits = (
                model(
                    input_ids=torch.stack([first, second]),
                    attention_mask=torch.ones(2, length, dtype=torch.long),
                )
                .logits[:, 0]
                .float()
            )
    finally:
        model.train(was_training)
    change = (logits[0] - logits[1]).abs().max().item()
    scale = logits.abs().max().item()
    return change > 1e-5 * max(scale, 1e-12)


def _missing_head(model, missing_keys) -> list[str]:
    """The output layer's parameters that the checkpoint did not hold (initialised at random)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is None:
        return []
    prefix = next((name for name, module in model.named_modules() if module is head), None)
    if prefix is None:
        return []
    mine = {f"{prefix}.{name}" for name, _ in head.named_parameters()}
    # A tied head shares the input embedding's tensor, which the checkpoint holds.
    tied = {f"{prefix}.{name}" for name, p in head.named_parameters() if p is model.get_input_embeddings().weight}
    return sorted(k for k in missing_keys if k in mine and k not in tied)


def load_tokenizer(folder: str):
    """The folder's tokenizer, with a pad token (eos, unk or bos when it has none)."""
    path = Path(folder)
    if not any((path / name).is_file() for name in _TOKENIZER_FILES):
        raise CLIError(
            f"{folder} has no tokenizer (none of tokenizer.json, tokenizer_config.json, "
            f"vocab.txt, ...); save it next to the model with tokenizer.save_pretrained('{folder}')"
        )
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    except Exception as err:  # transformers raises many types here; one line is all we print
        msg = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise CLIError(f"cannot load the tokenizer from {folder}: {msg}") from None
    if tokenizer.pad_token is None:
        # Padding is masked out (attention mask, labels -100), so any existing token will do.
        for candidate in (tokenizer.eos_token, tokenizer.unk_token, tokenizer.bos_token):
            if candidate is not None:
                tokenizer.pad_token = candidate
                break
        else:
            raise CLIError(
                f"the tokenizer in {folder} has no pad, eos, unk or bos token to pad batches with; "
                f"set one (tokenizer.pad_token = ...) and save it again"
            )
    return tokenizer


def _lora_targets(model) -> list[str]:
    """Names of the linear layers outside the output head (peft's ``target_modules``)."""
    from torch import nn

    from ..grouping import HEAD_NAMES

    try:
        from transformers.pytorch_utils import Conv1D

        linear: tuple[type, ...] = (nn.Linear, Conv1D)
    except ImportError:  # pragma: no cover - every supported transformers has Conv1D
        linear = (nn.Linear,)
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, linear) or module is output:
            continue
        if name.split(".")[0] in HEAD_NAMES:
            continue
        names.append(name)
    return names


def add_lora(model, folder: str, rank: int, seed: int):
    """``model`` with peft LoRA adapters of ``rank`` on every linear layer but the head,
    initialised from ``seed``."""
    import torch
    from peft import LoraConfig, get_peft_model

    targets = _lora_targets(model)
    if not targets:
        raise CLIError(f"--lora: the model in {folder} has no linear layer outside its head to adapt")
    modules = dict(model.named_modules())
    # GPT-2-style Conv1D layers store (in, out) weights; peft must be told (it warns otherwise).
    conv1d = all(type(modules[name]).__name__ == "Conv1D" for name in targets)
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        # peft calls a transformers property that transformers 5 deprecates; not ours to fix.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        return get_peft_model(
            model,
            LoraConfig(
                r=rank,
                lora_alpha=2 * rank,
                target_modules=targets,
                lora_dropout=0.0,
                fan_in_fan_out=conv1d,
            ),
        )
