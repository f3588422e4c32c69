"""Hand-built one-layer GPT-2 models with planted knowledge neurons (no training).

Every prompt ends with its subject, attention writes nothing (its output projection is zero) and there are
no position embeddings, so the residual stream at the answer position is the subject's embedding, plus
what the FFN writes. Directions are orthonormal and orthogonal to the all-ones vector, so LayerNorm only
rescales. Neurons:

* fact neuron k (index k): fires only on fact k's subject and writes fact k's answer direction;
* gate neuron of relation r (index 8 + r): fires on every subject of relation r and writes the relation's
  gate direction; without it every answer of the relation gets a large negative logit (a kill switch).

``kind``: "specific" (fact neurons only: suppressing neuron k removes fact k and nothing else),
"killswitch" (gates only, the answer read from the subject direction by the head: suppressing a gate
removes every fact of its relation), "mixed" (both: the gate is necessary for every fact of the relation,
the fact neuron picks the answer among the relation's objects).
"""

from __future__ import annotations

import torch
import transformers as tr

from helpers import SPECIALS, WORDS, tiny_tokenizer
from legibility import Fact, LoadedModel, load_model

RELATIONS = {
    "P36": ({"germany": "berlin", "france": "paris", "italy": "rome", "spain": "madrid"}, "capital"),
    "P37": ({"berlin": "german", "paris": "french", "rome": "italian", "madrid": "spanish"}, "language"),
}
GATE = 8  # index of relation 0's gate neuron


def planted_facts() -> list[Fact]:
    facts = []
    for rel, (pairs, word) in RELATIONS.items():
        templates = (f"the {word} of [X] [Y]", f"{word} of [X] [Y]", f"a {word} of [X] [Y]")
        facts += [Fact(s, rel, o, tuple(t.replace("[X]", s) for t in templates)) for s, o in pairs.items()]
    return facts


def planted_lm(kind: str = "specific", d: int = 32) -> LoadedModel:
    tok = tiny_tokenizer()
    vocab = tok.get_vocab()
    n_vocab = len(SPECIALS) + len(WORDS)
    cfg = tr.GPT2Config(
        vocab_size=n_vocab,
        n_embd=d,
        n_layer=1,
        n_head=4,
        n_inner=48,
        n_positions=64,
        tie_word_embeddings=False,
    )
    cfg.tie_word_embeddings = False
    model = tr.GPT2LMHeadModel(cfg)
    g = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.cat([torch.ones(d, 1), torch.randn(d, d - 1, generator=g)], 1))
    dirs = basis[:, 1:].T  # [d - 1, d] orthonormal, zero mean
    subj, ans, gate, common, spare = dirs[0:8], dirs[8:16], dirs[16:18], dirs[18], dirs[19]
    gated, specific = kind in ("killswitch", "mixed"), kind in ("specific", "mixed")
    if kind not in ("specific", "killswitch", "mixed"):
        raise ValueError(kind)
    facts = [(s, o) for pairs, _ in RELATIONS.values() for s, o in pairs.items()]
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.transformer.wte.weight[:] = spare  # every other token: one spare direction
        for k, (s, _) in enumerate(facts):
            model.transformer.wte.weight[vocab[s]] = subj[k] + (common if gated else 0)
        block = model.transformer.h[0]
        for ln in (block.ln_1, block.ln_2, model.transformer.ln_f):
            ln.weight.fill_(1.0)
        block.ln_2.weight.fill_(d**-0.5)  # ln_2 output = x / |x|
        w, bias = 20.0, -(7.0 if gated else 10.0)  # |x| = sqrt(2) with the common direction
        fc, proj = block.mlp.c_fc, block.mlp.c_proj  # Conv1D: weights [in, out]
        head = model.lm_head.weight
        # the gate writes 2 * gelu(20 / sqrt(2) - 7) along its direction; the head's -offset * common cancels
        # 4 times that exactly, so with the gate on only the answer term is left
        offset = (
            4.0 * 2.0 * float(torch.nn.functional.gelu(torch.tensor(w / 2**0.5 + bias), approximate="tanh"))
        )
        for k, (_, o) in enumerate(facts):
            r = k // 4
            if specific:
                fc.weight[:, k] = w * subj[k]
                fc.bias[k] = bias
                proj.weight[k] = (4.0 if gated else 10.0) / 5.0 * ans[k]  # activation ~5 when firing
            if gated:
                fc.weight[:, GATE + r] += w * subj[k]
                fc.bias[GATE + r] = bias
                proj.weight[GATE + r] = 2.0 * gate[r]
            if kind == "specific":
                head[vocab[o]] = 3.0 * ans[k]
            elif kind == "killswitch":
                head[vocab[o]] = 30.0 * subj[k] + 4.0 * gate[r] - offset * common
            else:
                head[vocab[o]] = 8.0 * ans[k] + 4.0 * gate[r] - offset * common
    model.eval()
    return load_model(model, tok, site="ffn")
