"""Tests for adapeft_optim.grouping: name-by-name expected tables on tiny models."""

from __future__ import annotations

import pytest
import torch
import transformers
from peft import LoraConfig, get_peft_model
from torch import nn

from adapeft_optim.grouping import (
    GRANULARITIES,
    GROUP_NAMES,
    HEAD_NAMES,
    GroupRow,
    base_name,
    describe_groups,
    group_parameters,
)

# Library-internal deprecation noise from peft calling into transformers and torch.jit.
pytestmark = [
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning:torch.jit.*"),
]

# ---------------------------------------------------------------------------------------
# tiny models (no hub downloads)

N_LAYER, N_EMBD, VOCAB, N_POS = 2, 64, 128, 32
BERT_KW = dict(
    vocab_size=100,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_position_embeddings=64,
    num_labels=3,
)


def gpt2():
    config = transformers.GPT2Config(
        n_layer=N_LAYER,
        n_embd=N_EMBD,
        n_head=2,
        vocab_size=VOCAB,
        n_positions=N_POS,
        bos_token_id=0,
        eos_token_id=0,
    )
    return transformers.GPT2LMHeadModel(config)


def gpt2_lora(target_modules=("c_attn",)):
    config = LoraConfig(r=4, target_modules=list(target_modules), fan_in_fan_out=True)
    return get_peft_model(gpt2(), config)


def bert_cls():
    return transformers.BertForSequenceClassification(transformers.BertConfig(**BERT_KW))


def roberta_cls():
    return transformers.RobertaForSequenceClassification(transformers.RobertaConfig(**BERT_KW))


def with_lora(model, modules_to_save=None):
    config = LoraConfig(r=4, target_modules=["query", "value"], modules_to_save=modules_to_save)
    return get_peft_model(model, config)


def llama():
    config = transformers.LlamaConfig(
        vocab_size=100,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
    )
    return transformers.LlamaForCausalLM(config)


def t5():
    config = transformers.T5Config(
        vocab_size=100,
        d_model=32,
        d_kv=8,
        d_ff=64,
        num_layers=1,
        num_heads=2,
        decoder_start_token_id=0,
    )
    return transformers.T5ForConditionalGeneration(config)


class TinyRMSNorm(nn.Module):
    """A norm recognised only by its class name, like transformers' LlamaRMSNorm."""

    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))


class Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.ln = nn.LayerNorm(8)
        self.bn = nn.BatchNorm1d(8)
        self.rms = TinyRMSNorm(8)
        self.blocks = nn.ModuleList([nn.Linear(8, 8) for _ in range(2)])
        self.mlp = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8))
        # Names that a substring test would misread.
        self.lora_Bias = nn.Linear(8, 8)
        self.classifier_extra = nn.Linear(8, 2)
        self.encoder = nn.ModuleDict({"classifier": nn.Linear(8, 2)})
        self.out = nn.Linear(8, 3)
        self.lora_A = nn.Parameter(torch.zeros(2, 8))  # a hand-written adapter


class HeadFirst(nn.Module):
    """Output layer registered before the embedding it is tied to; a head with a norm."""

    def __init__(self):
        super().__init__()
        self.lm_head = nn.Linear(8, 10, bias=False)
        self.wte = nn.Embedding(10, 8)
        self.lm_head.weight = self.wte.weight
        self.classifier = nn.Sequential(nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 2))


class WithOutputEmbeddings(nn.Module):
    """A head found only through get_output_embeddings()."""

    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 8)
        self.proj = nn.Linear(8, 10)

    def get_output_embeddings(self):
        return self.proj


# ---------------------------------------------------------------------------------------
# helpers


def group_of(groups):
    """id(param) -> group name."""
    return {id(p): name for name, params in groups.items() for p in params}


def check_expected(model, groups, expected):
    params = dict(model.named_parameters())
    by_id = group_of(groups)
    for name, group in expected.items():
        assert by_id.get(id(params[name])) == group, name


def check_partition(model, groups, include_frozen=False):
    """Every selected parameter in exactly one group, nothing else, order kept; peft's
    frozen ``original_module`` behind a ``modules_to_save`` copy is in no group."""
    order = {id(p): i for i, (_, p) in enumerate(model.named_parameters())}
    wanted = {
        id(p)
        for n, p in model.named_parameters()
        if (include_frozen or p.requires_grad) and "original_module" not in n.split(".")
    }
    grouped = [id(p) for params in groups.values() for p in params]
    assert len(grouped) == len(set(grouped))
    assert set(grouped) == wanted
    for name, params in groups.items():
        assert params, name
        positions = [order[id(p)] for p in params]
        assert positions == sorted(positions), name
    ranks = [GROUP_NAMES.index(base_name(name)) for name in groups]
    assert ranks == sorted(ranks)


def names_in(model, params):
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for p in params]


# ---------------------------------------------------------------------------------------
# GPT-2


def gpt2_table(prefix=""):
    """Complete expected grouping of the full GPT-2 model, written out by hand."""
    table = {
        "transformer.wte.weight": "embed",
        "transformer.wpe.weight": "embed",
        "transformer.ln_f.weight": "norm",
        "transformer.ln_f.bias": "norm",
    }
    for i in range(N_LAYER):
        h = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            table[h + ln + ".weight"] = "norm"
            table[h + ln + ".bias"] = "norm"
        for linear in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
            table[h + linear + ".weight"] = "others"
            table[h + linear + ".bias"] = "bias"
    return {prefix + name: group for name, group in table.items()}


def test_gpt2_full_table():
    model = gpt2()
    groups = group_parameters(model)
    assert list(groups) == ["norm", "bias", "embed", "others"]
    table = gpt2_table()
    assert set(table) == {n for n, _ in model.named_parameters()}
    check_expected(model, groups, table)
    check_partition(model, groups)


def test_gpt2_tied_head_is_embed():
    model = gpt2()
    assert model.lm_head.weight is model.transformer.wte.weight
    groups = group_parameters(model)
    assert "head" not in groups
    assert group_of(groups)[id(model.lm_head.weight)] == "embed"
    assert names_in(model, groups["embed"]) == ["transformer.wte.weight", "transformer.wpe.weight"]


def test_gpt2_lora_default_only_adapters():
    model = gpt2_lora()
    groups = group_parameters(model)
    assert list(groups) == ["lora_A", "lora_B"]
    p = "base_model.model.transformer.h."
    assert names_in(model, groups["lora_A"]) == [f"{p}{i}.attn.c_attn.lora_A.default.weight" for i in range(N_LAYER)]
    assert names_in(model, groups["lora_B"]) == [f"{p}{i}.attn.c_attn.lora_B.default.weight" for i in range(N_LAYER)]
    check_partition(model, groups)


def test_gpt2_lora_include_frozen_full_partition():
    model = gpt2_lora()
    groups = group_parameters(model, include_frozen=True)
    assert list(groups) == ["lora_A", "lora_B", "norm", "bias", "embed", "others"]
    table = {}
    for name, group in gpt2_table("base_model.model.").items():
        # peft moves the wrapped layer's own tensors under base_layer.
        table[name.replace("c_attn.", "c_attn.base_layer.")] = group
    for i in range(N_LAYER):
        c_attn = f"base_model.model.transformer.h.{i}.attn.c_attn."
        table[c_attn + "lora_A.default.weight"] = "lora_A"
        table[c_attn + "lora_B.default.weight"] = "lora_B"
    assert set(table) == {n for n, _ in model.named_parameters()}
    check_expected(model, groups, table)
    check_partition(model, groups, include_frozen=True)


def test_gpt2_lora_embedding_variants():
    model = gpt2_lora(target_modules=("wte", "c_attn"))
    groups = group_parameters(model)
    check_expected(
        model,
        groups,
        {
            "base_model.model.transformer.wte.lora_embedding_A.default": "lora_A",
            "base_model.model.transformer.wte.lora_embedding_B.default": "lora_B",
            "base_model.model.transformer.h.0.attn.c_attn.lora_A.default.weight": "lora_A",
            "base_model.model.transformer.h.1.attn.c_attn.lora_B.default.weight": "lora_B",
        },
    )
    check_partition(model, groups)
    frozen = group_parameters(model, include_frozen=True)
    check_expected(model, frozen, {"base_model.model.transformer.wte.base_layer.weight": "embed"})
    check_partition(model, frozen, include_frozen=True)


# ---------------------------------------------------------------------------------------
# BERT / RoBERTa sequence classification

BERT_TABLE = {
    "bert.embeddings.word_embeddings.weight": "embed",
    "bert.embeddings.position_embeddings.weight": "embed",
    "bert.embeddings.token_type_embeddings.weight": "embed",
    "bert.embeddings.LayerNorm.weight": "norm",
    "bert.embeddings.LayerNorm.bias": "norm",
    "bert.encoder.layer.0.attention.self.query.weight": "others",
    "bert.encoder.layer.0.attention.self.query.bias": "bias",
    "bert.encoder.layer.1.attention.output.LayerNorm.bias": "norm",
    "bert.encoder.layer.1.output.dense.bias": "bias",
    "bert.pooler.dense.weight": "others",
    "bert.pooler.dense.bias": "bias",
    "classifier.weight": "head",
    "classifier.bias": "head",
}

ROBERTA_TABLE = {
    "roberta.embeddings.word_embeddings.weight": "embed",
    "roberta.embeddings.position_embeddings.weight": "embed",
    "roberta.embeddings.LayerNorm.weight": "norm",
    "roberta.encoder.layer.0.intermediate.dense.weight": "others",
    "roberta.encoder.layer.0.output.LayerNorm.bias": "norm",
    "roberta.encoder.layer.1.attention.self.value.bias": "bias",
    "classifier.dense.weight": "head",
    "classifier.dense.bias": "head",
    "classifier.out_proj.weight": "head",
    "classifier.out_proj.bias": "head",
}


@pytest.mark.parametrize("build, table", [(bert_cls, BERT_TABLE), (roberta_cls, ROBERTA_TABLE)])
def test_sequence_classification(build, table):
    model = build()
    groups = group_parameters(model)
    assert list(groups) == ["head", "norm", "bias", "embed", "others"]
    check_expected(model, groups, table)
    check_partition(model, groups)


@pytest.mark.parametrize("build, backbone", [(bert_cls, "bert"), (roberta_cls, "roberta")])
def test_sequence_classification_lora(build, backbone):
    model = with_lora(build())
    groups = group_parameters(model)
    assert list(groups) == ["lora_A", "lora_B"]
    layer = f"base_model.model.{backbone}.encoder.layer.1.attention.self."
    check_expected(
        model,
        groups,
        {
            layer + "query.lora_A.default.weight": "lora_A",
            layer + "value.lora_B.default.weight": "lora_B",
        },
    )
    check_partition(model, groups)

    frozen = group_parameters(model, include_frozen=True)
    check_expected(
        model,
        frozen,
        {
            layer + "query.base_layer.weight": "others",
            layer + "query.base_layer.bias": "bias",
            layer + "key.bias": "bias",
            f"base_model.model.{backbone}.embeddings.LayerNorm.weight": "norm",
        },
    )
    check_partition(model, frozen, include_frozen=True)


def test_bert_lora_modules_to_save_head():
    model = with_lora(bert_cls(), modules_to_save=["classifier"])
    groups = group_parameters(model)
    assert list(groups) == ["lora_A", "lora_B", "head"]
    assert names_in(model, groups["head"]) == [
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias",
    ]
    check_partition(model, groups)

    frozen = group_parameters(model, include_frozen=True)
    check_expected(
        model,
        frozen,
        {
            "base_model.model.classifier.original_module.weight": None,  # in no group
            "base_model.model.classifier.original_module.bias": None,
            "base_model.model.bert.pooler.dense.bias": "bias",
        },
    )
    assert names_in(model, frozen["head"]) == names_in(model, groups["head"])
    check_partition(model, frozen, include_frozen=True)


def minilm_seq_cls():
    # MiniLM's width (384) and a 12-class head, one small layer: the setup.
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=384,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=12,
    )
    model = transformers.BertForSequenceClassification(config)
    return get_peft_model(model, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))


def test_seq_cls_head_is_counted_once():
    model = minilm_seq_cls()
    copy = "base_model.model.classifier.modules_to_save.default."
    expected = [copy + "weight", copy + "bias"]
    for include_frozen in (False, True):
        groups = group_parameters(model, include_frozen=include_frozen)
        assert names_in(model, groups["head"]) == expected
        assert sum(p.numel() for p in groups["head"]) == 384 * 12 + 12 == 4_620
        check_partition(model, groups, include_frozen=include_frozen)
    # Everything made trainable (as in the issue): the original is still not a group.
    for p in model.parameters():
        p.requires_grad_(True)
    groups = group_parameters(model, granularity="block")
    assert names_in(model, groups["head"]) == expected
    check_partition(model, groups)


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`:UserWarning")
def test_modules_to_save_original_tied_elsewhere_stays_grouped():
    # A tensor of the original that another module also owns (a tied head) keeps that
    # module's group: only tensors reachable solely through original_module are dropped.
    model = get_peft_model(
        gpt2(),
        LoraConfig(
            r=4,
            target_modules=["c_attn"],
            fan_in_fan_out=True,
            modules_to_save=["lm_head"],
        ),
    )
    groups = group_parameters(model, include_frozen=True)
    wte = model.base_model.model.transformer.wte.weight
    assert sum(p is wte for p in groups["embed"]) == 1
    head = model.base_model.model.lm_head
    assert [id(p) for p in groups["head"]] == [id(head.modules_to_save["default"].weight)]


def test_roberta_lora_modules_to_save_head():
    model = with_lora(roberta_cls(), modules_to_save=["classifier"])
    groups = group_parameters(model)
    copy = "base_model.model.classifier.modules_to_save.default."
    assert names_in(model, groups["head"]) == [
        copy + "dense.weight",
        copy + "dense.bias",
        copy + "out_proj.weight",
        copy + "out_proj.bias",
    ]
    assert all(p.requires_grad for p in groups["head"])
    check_partition(model, groups)


def test_bert_pretraining_cls_head():
    model = transformers.BertForPreTraining(transformers.BertConfig(**BERT_KW))
    groups = group_parameters(model)
    check_expected(
        model,
        groups,
        {
            # decoder.weight is tied to the word embeddings and listed once, there.
            "bert.embeddings.word_embeddings.weight": "embed",
            "cls.predictions.bias": "head",
            "cls.predictions.transform.dense.weight": "head",
            "cls.predictions.transform.dense.bias": "head",
            "cls.predictions.transform.LayerNorm.weight": "norm",
            "cls.predictions.transform.LayerNorm.bias": "norm",
            "cls.seq_relationship.weight": "head",
            "cls.seq_relationship.bias": "head",
        },
    )
    check_partition(model, groups)


# ---------------------------------------------------------------------------------------
# RMSNorm-style models


def test_llama_rmsnorm():
    model = llama()
    groups = group_parameters(model)
    assert list(groups) == ["head", "norm", "embed", "others"]  # no biases in Llama
    check_expected(
        model,
        groups,
        {
            "model.embed_tokens.weight": "embed",
            "model.layers.0.input_layernorm.weight": "norm",
            "model.layers.1.post_attention_layernorm.weight": "norm",
            "model.norm.weight": "norm",
            "model.layers.0.self_attn.q_proj.weight": "others",
            "model.layers.1.mlp.down_proj.weight": "others",
            "lm_head.weight": "head",
        },
    )
    check_partition(model, groups)


def test_t5_layer_norm_and_tied_head():
    model = t5()
    groups = group_parameters(model)
    assert list(groups) == ["norm", "embed", "others"]
    check_expected(
        model,
        groups,
        {
            "shared.weight": "embed",
            "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "embed",
            "encoder.block.0.layer.0.layer_norm.weight": "norm",
            "decoder.block.0.layer.2.layer_norm.weight": "norm",
            "encoder.final_layer_norm.weight": "norm",
            "decoder.block.0.layer.1.EncDecAttention.q.weight": "others",
        },
    )
    check_partition(model, groups)


# ---------------------------------------------------------------------------------------
# plain modules


PLAIN_TABLE = {
    "embed.weight": "embed",
    "ln.weight": "norm",
    "ln.bias": "norm",
    "bn.weight": "norm",
    "bn.bias": "norm",
    "rms.weight": "norm",
    "blocks.0.weight": "others",
    "blocks.1.bias": "bias",
    "mlp.0.weight": "others",
    "mlp.2.bias": "bias",
    "lora_Bias.weight": "others",
    "lora_Bias.bias": "bias",
    "classifier_extra.weight": "others",
    "encoder.classifier.weight": "others",
    "encoder.classifier.bias": "bias",
    "out.weight": "others",
    "out.bias": "bias",
    "lora_A": "lora_A",
}


def test_plain_module_by_type_and_segment():
    model = Plain()
    groups = group_parameters(model)
    assert list(groups) == ["lora_A", "norm", "bias", "embed", "others"]
    check_expected(model, groups, PLAIN_TABLE)
    check_partition(model, groups)


def test_head_names_extend():
    model = Plain()
    groups = group_parameters(model, head_names=(*HEAD_NAMES, "out"))
    check_expected(model, groups, {**PLAIN_TABLE, "out.weight": "head", "out.bias": "head"})
    check_partition(model, groups)
    dotted = group_parameters(model, head_names=("encoder.classifier",))
    check_expected(model, dotted, {"encoder.classifier.bias": "head", "out.bias": "bias"})


def test_tied_head_registered_first_and_norm_inside_head():
    model = HeadFirst()
    assert next(model.named_parameters())[0] == "lm_head.weight"
    groups = group_parameters(model)
    check_expected(
        model,
        groups,
        {
            "lm_head.weight": "embed",
            "classifier.0.weight": "head",
            "classifier.0.bias": "head",
            "classifier.1.weight": "norm",
            "classifier.1.bias": "norm",
            "classifier.2.bias": "head",
        },
    )
    check_partition(model, groups)


def test_head_from_get_output_embeddings():
    model = WithOutputEmbeddings()
    groups = group_parameters(model)
    check_expected(
        model, groups, {"proj.weight": "head", "proj.bias": "head", "body.weight": "others", "body.bias": "bias"}
    )


@pytest.mark.parametrize("wrap", [torch.compile, nn.DataParallel], ids=["compile", "dp"])
def test_wrapped_module_head(wrap):
    inner = HeadFirst()
    model = wrap(inner)
    groups = group_parameters(model)
    head = inner.classifier
    assert [id(p) for p in groups["head"]] == [
        id(head[0].weight),
        id(head[0].bias),
        id(head[2].weight),
        id(head[2].bias),
    ]
    check_partition(model, groups)


def test_frozen_left_out():
    model = Plain()
    model.ln.requires_grad_(False)
    model.embed.requires_grad_(False)
    groups = group_parameters(model)
    assert "embed" not in groups
    assert names_in(model, groups["norm"]) == ["bn.weight", "bn.bias", "rms.weight"]
    check_partition(model, groups)
    with_frozen = group_parameters(model, include_frozen=True)
    assert names_in(model, with_frozen["norm"]) == ["ln.weight", "ln.bias", "bn.weight", "bn.bias", "rms.weight"]
    check_partition(model, with_frozen, include_frozen=True)
    model.requires_grad_(False)
    assert group_parameters(model) == {}


def test_deterministic():
    model = gpt2_lora()
    first = group_parameters(model, include_frozen=True, granularity="block")
    second = group_parameters(model, include_frozen=True, granularity="block")
    assert list(first) == list(second)
    assert {k: [id(p) for p in v] for k, v in first.items()} == {k: [id(p) for p in v] for k, v in second.items()}
    other = gpt2_lora()
    third = group_parameters(other, include_frozen=True, granularity="block")
    assert {k: names_in(model, v) for k, v in first.items()} == {k: names_in(other, v) for k, v in third.items()}


# ---------------------------------------------------------------------------------------
# block granularity


def test_gpt2_blocks():
    model = gpt2()
    groups = group_parameters(model, granularity="block")
    assert list(groups) == ["norm", "norm@0", "norm@1", "bias@0", "bias@1", "embed", "others@0", "others@1"]
    assert names_in(model, groups["norm@1"]) == [
        "transformer.h.1.ln_1.weight",
        "transformer.h.1.ln_1.bias",
        "transformer.h.1.ln_2.weight",
        "transformer.h.1.ln_2.bias",
    ]
    assert names_in(model, groups["norm"]) == ["transformer.ln_f.weight", "transformer.ln_f.bias"]
    # Coarsening the block groups gives back the type groups.
    by_type = group_parameters(model)
    merged = {}
    for name, params in groups.items():
        merged.setdefault(base_name(name), []).extend(params)
    for name, params in by_type.items():
        assert sorted(map(id, merged[name])) == sorted(map(id, params)), name
    check_partition(model, groups)


def test_blocks_peft_and_nested_lists():
    model = gpt2_lora()
    assert list(group_parameters(model, granularity="block")) == ["lora_A@0", "lora_A@1", "lora_B@0", "lora_B@1"]
    # T5 nests ModuleLists (block.0.layer.1); the outer index names the block.
    model = t5()
    groups = group_parameters(model, granularity="block")
    check_expected(
        model,
        groups,
        {
            "encoder.block.0.layer.1.layer_norm.weight": "norm@0",
            "encoder.final_layer_norm.weight": "norm",
            "shared.weight": "embed",
            "decoder.block.0.layer.2.DenseReluDense.wo.weight": "others@0",
        },
    )
    check_partition(model, groups)


def test_blocks_need_module_list():
    model = Plain()
    groups = group_parameters(model, granularity="block")
    check_expected(
        model,
        groups,
        {
            "blocks.0.weight": "others@0",
            "blocks.1.bias": "bias@1",
            "mlp.0.weight": "others",  # nn.Sequential children are not blocks
            "mlp.2.bias": "bias",
        },
    )
    check_partition(model, groups)


def test_block_order_is_numeric():
    model = nn.ModuleList([nn.Linear(2, 2, bias=False) for _ in range(11)])
    groups = group_parameters(model, granularity="block")
    assert list(groups) == [f"others@{i}" for i in range(11)]


@pytest.mark.parametrize(
    "name, expected",
    [("norm@3", "norm"), ("norm", "norm"), ("lora_A@12", "lora_A"), ("others", "others")],
)
def test_base_name(name, expected):
    assert base_name(name) == expected


# ---------------------------------------------------------------------------------------
# describe_groups


def test_describe_groups_hand_count():
    model = gpt2()
    rows = describe_groups(group_parameters(model))
    d, ff, qkv = N_EMBD, 4 * N_EMBD, 3 * N_EMBD
    norm = N_LAYER * 2 * 2 * d + 2 * d  # ln_1, ln_2 per block + ln_f, weight and bias
    bias = N_LAYER * (qkv + d + ff + d)  # c_attn, attn.c_proj, c_fc, mlp.c_proj
    embed = VOCAB * d + N_POS * d
    others = N_LAYER * (d * qkv + d * d + d * ff + ff * d)
    total = norm + bias + embed + others
    assert total == sum(p.numel() for p in model.parameters())
    assert rows == [
        GroupRow("norm", 10, norm, norm / total),
        GroupRow("bias", 8, bias, bias / total),
        GroupRow("embed", 2, embed, embed / total),
        GroupRow("others", 8, others, others / total),
    ]
    assert rows[0].numel == 640 and total == 110336


def test_describe_groups_edge_cases():
    assert describe_groups({}) == []
    assert describe_groups({"bias": []}) == [GroupRow("bias", 0, 0, 0.0)]
    a, b = torch.zeros(3), torch.zeros(1)
    assert describe_groups({"x": iter([a]), "y": (b,)}) == [GroupRow("x", 1, 3, 0.75), GroupRow("y", 1, 1, 0.25)]


# ---------------------------------------------------------------------------------------
# errors


def test_not_a_module():
    with pytest.raises(TypeError, match=r"nn\.Module.*got list"):
        group_parameters(list(Plain().parameters()))


def test_bad_granularity():
    assert GRANULARITIES == ("type", "block")
    with pytest.raises(ValueError, match=r"granularity: 'layer'; use one of \('type', 'block'\)"):
        group_parameters(Plain(), granularity="layer")


def test_head_names_string():
    with pytest.raises(TypeError, match=r"head_names.*string 'out'"):
        group_parameters(Plain(), head_names="out")


def test_describe_groups_not_mapping():
    with pytest.raises(TypeError, match="mapping name -> parameters.*got list"):
        describe_groups([torch.zeros(2)])
