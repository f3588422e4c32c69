"""Tiny random models of every supported family, with a small word-level tokenizer (no downloads)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from legibility import Fact, LoadedModel, load_model

WORDS = [
    "the",
    "capital",
    "of",
    "is",
    "city",
    "germany",
    "france",
    "italy",
    "spain",
    "berlin",
    "paris",
    "rome",
    "madrid",
    "a",
    "in",
    "was",
    "born",
    "language",
    "speaks",
    "english",
    "french",
    "german",
    "italian",
    "spanish",
    "located",
    "country",
    ".",
    ",",
    "who",
    "what",
]
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]

FAMILIES = ["gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma", "gemma2", "bert", "roberta"]
MASKED = {"bert", "roberta"}
# Every family of the architecture table (models.sites.FAMILIES): the consistency tests run on all of them;
# FAMILIES above stays the (faster) set the attribution and parity tests sweep.
ALL_FAMILIES = [*FAMILIES, "qwen3", "gemma3_text"]


def tiny_tokenizer(masked: bool = False) -> PreTrainedTokenizerFast:
    vocab = {t: i for i, t in enumerate(SPECIALS + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Whitespace()])
    from tokenizers import normalizers, processors

    tok.normalizer = normalizers.Lowercase()
    if masked:
        tok.post_processor = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def tiny_config(family: str, **overrides):
    import transformers as tr

    v = len(SPECIALS) + len(WORDS)
    common = dict(
        vocab_size=v, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48
    )
    if family == "gpt2":
        cfg = tr.GPT2Config(vocab_size=v, n_embd=32, n_layer=3, n_head=4, n_inner=48, n_positions=64)
    elif family == "gpt_neox":
        cfg = tr.GPTNeoXConfig(**common, max_position_embeddings=64)
    elif family == "llama":
        cfg = tr.LlamaConfig(**common, num_key_value_heads=2, max_position_embeddings=64)
    elif family == "mistral":
        cfg = tr.MistralConfig(**common, num_key_value_heads=2, max_position_embeddings=64)
    elif family == "qwen2":
        cfg = tr.Qwen2Config(**common, num_key_value_heads=2, max_position_embeddings=64)
    elif family == "gemma":
        cfg = tr.GemmaConfig(**common, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    elif family == "gemma2":
        cfg = tr.Gemma2Config(**common, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    elif family == "qwen3":
        cfg = tr.Qwen3Config(**common, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    elif family == "gemma3_text":
        cfg = tr.Gemma3TextConfig(**common, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
    elif family == "bert":
        cfg = tr.BertConfig(**common, max_position_embeddings=64)
    elif family == "roberta":
        cfg = tr.RobertaConfig(**common, max_position_embeddings=64, pad_token_id=0)
    else:
        raise ValueError(family)
    for k, val in overrides.items():
        setattr(cfg, k, val)
    return cfg


def tiny_lm(family: str = "llama", seed: int = 0, site: str = "ffn") -> LoadedModel:
    import transformers as tr

    torch.manual_seed(seed)
    cfg = tiny_config(family)
    auto = tr.AutoModelForMaskedLM if family in MASKED else tr.AutoModelForCausalLM
    model = auto.from_config(cfg)
    # Random init gives near-uniform outputs; a larger scale makes probabilities and gradients non-trivial.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(4.0)
    return load_model(model, tiny_tokenizer(masked=family in MASKED), site=site)


def tiny_facts() -> list[Fact]:
    templates = ("the capital of [X] is [Y] .", "[X] capital city is [Y] .", "the capital city of [X] is [Y]")
    pairs = {"germany": "berlin", "france": "paris", "italy": "rome", "spain": "madrid"}
    langs = {"germany": "german", "france": "french", "italy": "italian", "spain": "spanish"}
    facts = [Fact(s, "P36", o, tuple(t.replace("[X]", s) for t in templates)) for s, o in pairs.items()]
    ltemps = ("the language of [X] is [Y] .", "in [X] a city speaks [Y]")
    facts += [Fact(s, "P37", o, tuple(t.replace("[X]", s) for t in ltemps)) for s, o in langs.items()]
    return facts
