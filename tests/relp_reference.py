"""A plain reference for RelP: each family's forward pass written out op by op from its HF weights, with the
LRP rules as explicit frozen constants, and the FFN neurons' scores read by autograd.

Independent of the hook implementation (legibility.attribution.relevance): no module hooks, no torch function
mode. The rules are written as linearizations with a frozen coefficient (norm: x * c with c = scale
computed and then detached; activation: x * (f(x) / x) frozen; gated product: the product rule with each
term halved; attention: probabilities computed and then detached). With ``rules=False`` the same code is the
plain model, which :func:`check_parity` pins against the HF logits, so the written-out architecture is right.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from legibility.facts.types import Query
from legibility.models.loading import LoadedModel


def _freeze(t: Tensor, rules: bool) -> Tensor:
    return t.detach() if rules else t


def rms_norm(x: Tensor, module, rules: bool, offset: float = 0.0) -> Tensor:
    eps = getattr(module, "variance_epsilon", None) or module.eps
    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return x * _freeze(scale, rules) * (offset + module.weight)


def layer_norm(x: Tensor, module, rules: bool) -> Tensor:
    centered = x - x.mean(-1, keepdim=True)
    scale = torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + module.eps)
    return centered * _freeze(scale, rules) * module.weight + module.bias


def activation(x: Tensor, f, rules: bool) -> Tensor:
    if not rules:
        return f(x)
    return x * (f(x) / x).detach()  # the identity rule: relevance passes unchanged, gradient f(x) / x


def gated_product(a: Tensor, u: Tensor, rules: bool) -> Tensor:
    if not rules:
        return a * u
    return 0.5 * (a * u.detach()) + 0.5 * (a.detach() * u)  # the half rule


def attention(
    q: Tensor, k: Tensor, v: Tensor, scale: float, causal: bool, rules: bool, softcap=None
) -> Tensor:
    """q, k, v [heads, T, hd] -> [T, heads * hd]."""
    scores = q @ k.transpose(-1, -2) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if causal:
        t = q.shape[1]
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    probs = _freeze(scores.softmax(-1), rules)
    return (probs @ v).transpose(0, 1).reshape(q.shape[1], -1)


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotary embedding of the first cos.shape[-1] dims of x [heads, T, hd]."""
    d = cos.shape[-1]
    rot, rest = x[..., :d], x[..., d:]
    half = torch.cat([-rot[..., d // 2 :], rot[..., : d // 2]], -1)
    return torch.cat([rot * cos + half * sin, rest], -1)


class _Sites:
    """Zero deltas added at the answer position of each layer's site; their gradients are read."""

    def __init__(self, n_layers: int, n_neurons: int, pos: int):
        self.deltas = torch.zeros(n_layers, n_neurons, requires_grad=True)
        self.acts: list[Tensor] = []
        self.pos = pos

    def __call__(self, layer: int, s: Tensor) -> Tensor:  # s [T, n_neurons]
        self.acts.append(s[self.pos].detach())
        onehot = torch.zeros(s.shape[0], 1)
        onehot[self.pos] = 1.0
        return s + onehot * self.deltas[layer]


def _llama_like(lm: LoadedModel, ids: Tensor, sites: _Sites, rules: bool) -> Tensor:
    hf = lm.model
    cfg = hf.config
    family = cfg.model_type
    gemma = family.startswith("gemma")
    gemma2 = family in ("gemma2", "gemma3_text")
    offset = 1.0 if gemma else 0.0
    base = hf.model
    t = ids.shape[0]
    x = base.embed_tokens(ids[None])[0]  # Gemma's embedding module scales by sqrt(hidden_size) itself
    cos, sin = base.rotary_emb(x[None], torch.arange(t)[None])
    cos, sin = cos[0], sin[0]
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    scale = (cfg.query_pre_attn_scalar if gemma2 else hd) ** -0.5
    act = {"silu": F.silu, "gelu_pytorch_tanh": lambda z: F.gelu(z, approximate="tanh")}[
        getattr(cfg, "hidden_activation", None) or cfg.hidden_act
    ]
    for layer, block in enumerate(base.layers):
        at = block.self_attn
        h = rms_norm(x, block.input_layernorm, rules, offset)
        q = at.q_proj(h).view(t, heads, hd).transpose(0, 1)
        k = at.k_proj(h).view(t, kv, hd).transpose(0, 1)
        v = at.v_proj(h).view(t, kv, hd).transpose(0, 1)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        k, v = k.repeat_interleave(heads // kv, 0), v.repeat_interleave(heads // kv, 0)
        softcap = getattr(cfg, "attn_logit_softcapping", None) if gemma2 else None
        o = at.o_proj(attention(q, k, v, scale, True, rules, softcap))
        if gemma2:
            o = rms_norm(o, block.post_attention_layernorm, rules, offset)
            x = x + o
            h = rms_norm(x, block.pre_feedforward_layernorm, rules, offset)
        else:
            x = x + o
            h = rms_norm(x, block.post_attention_layernorm, rules, offset)
        mlp = block.mlp
        s = gated_product(activation(mlp.gate_proj(h), act, rules), mlp.up_proj(h), rules)
        y = mlp.down_proj(sites(layer, s))
        if gemma2:
            y = rms_norm(y, block.post_feedforward_layernorm, rules, offset)
        x = x + y
    x = rms_norm(x, base.norm, rules, offset)
    logits = hf.lm_head(x[sites.pos])
    cap = getattr(cfg, "final_logit_softcapping", None)
    return torch.tanh(logits / cap) * cap if cap else logits


def _gpt2(lm: LoadedModel, ids: Tensor, sites: _Sites, rules: bool) -> Tensor:
    hf = lm.model
    cfg = hf.config
    tr = hf.transformer
    t, d, heads = ids.shape[0], cfg.n_embd, cfg.n_head
    x = tr.wte(ids) + tr.wpe(torch.arange(t))
    act = lambda z: 0.5 * z * (1 + torch.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))  # noqa: E731
    for layer, block in enumerate(tr.h):
        h = layer_norm(x, block.ln_1, rules)
        q, k, v = block.attn.c_attn(h).split(d, -1)
        q, k, v = (z.view(t, heads, d // heads).transpose(0, 1) for z in (q, k, v))
        x = x + block.attn.c_proj(attention(q, k, v, (d // heads) ** -0.5, True, rules))
        h = layer_norm(x, block.ln_2, rules)
        s = activation(block.mlp.c_fc(h), act, rules)
        x = x + block.mlp.c_proj(sites(layer, s))
    x = layer_norm(x, tr.ln_f, rules)
    return hf.lm_head(x[sites.pos])


def _gpt_neox(lm: LoadedModel, ids: Tensor, sites: _Sites, rules: bool) -> Tensor:
    hf = lm.model
    cfg = hf.config
    base = hf.gpt_neox
    t, heads = ids.shape[0], cfg.num_attention_heads
    hd = cfg.hidden_size // heads
    x = base.embed_in(ids)
    cos, sin = base.rotary_emb(x[None], torch.arange(t)[None])
    cos, sin = cos[0], sin[0]
    for layer, block in enumerate(base.layers):
        at = block.attention
        qkv = at.query_key_value(layer_norm(x, block.input_layernorm, rules)).view(t, heads, 3 * hd)
        q, k, v = qkv.transpose(0, 1).chunk(3, -1)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        a = at.dense(attention(q, k, v, hd**-0.5, True, rules))
        h = layer_norm(x, block.post_attention_layernorm, rules)  # parallel residual
        s = activation(block.mlp.dense_h_to_4h(h), F.gelu, rules)
        x = x + a + block.mlp.dense_4h_to_h(sites(layer, s))
    x = layer_norm(x, base.final_layer_norm, rules)
    return hf.get_output_embeddings()(x[sites.pos])


def _bert_like(lm: LoadedModel, ids: Tensor, sites: _Sites, rules: bool) -> Tensor:
    hf = lm.model
    cfg = hf.config
    roberta = cfg.model_type == "roberta"
    base = hf.roberta if roberta else hf.bert
    t, heads = ids.shape[0], cfg.num_attention_heads
    hd = cfg.hidden_size // heads
    x = base.embeddings(input_ids=ids[None])[0]  # below every site: no rule can change a site's gradient
    for layer, block in enumerate(base.encoder.layer):
        sa = block.attention.self
        q, k, v = (m(x).view(t, heads, hd).transpose(0, 1) for m in (sa.query, sa.key, sa.value))
        out = block.attention.output
        x = layer_norm(out.dense(attention(q, k, v, hd**-0.5, False, rules)) + x, out.LayerNorm, rules)
        s = activation(block.intermediate.dense(x), F.gelu, rules)
        x = layer_norm(block.output.dense(sites(layer, s)) + x, block.output.LayerNorm, rules)
    x = x[sites.pos]
    if roberta:
        head = hf.lm_head
        z = layer_norm(activation(head.dense(x), F.gelu, rules), head.layer_norm, rules)
        return head.decoder(z)
    head = hf.cls.predictions
    z = layer_norm(activation(head.transform.dense(x), F.gelu, rules), head.transform.LayerNorm, rules)
    return head.decoder(z)


FORWARDS = {
    "llama": _llama_like,
    "mistral": _llama_like,
    "qwen2": _llama_like,
    "gemma": _llama_like,
    "gemma2": _llama_like,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "bert": _bert_like,
    "roberta": _bert_like,
}


def reference_logits(lm: LoadedModel, query: Query, rules: bool = False) -> Tensor:
    """Logits [vocab] at the answer position from the written-out forward."""
    sites = _Sites(lm.sites.n_layers, lm.sites.n_neurons, query.answer_pos)
    with torch.no_grad():
        return FORWARDS[lm.model.config.model_type](lm, torch.tensor(query.input_ids), sites, rules)


def relp_reference(lm: LoadedModel, query: Query) -> Tensor:
    """RelP scores [n_layers, n_neurons]: activation x d p(target) / d activation through the rules."""
    acts, grads = relp_reference_gradients(lm, query)
    return acts * grads


def relp_reference_gradients(lm: LoadedModel, query: Query) -> tuple[Tensor, Tensor]:
    """(activations, gradients through the rules), each [n_layers, n_neurons]."""
    sites = _Sites(lm.sites.n_layers, lm.sites.n_neurons, query.answer_pos)
    params = [p for p in lm.model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():
            logits = FORWARDS[lm.model.config.model_type](lm, torch.tensor(query.input_ids), sites, True)
            (g,) = torch.autograd.grad(logits.softmax(-1)[query.target_id], sites.deltas)
    finally:
        for p in params:
            p.requires_grad_(True)
    return torch.stack(sites.acts), g
