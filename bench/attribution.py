"""Attribution speed and agreement, side by side in one run (not a test).

    .venv/bin/python bench/attribution.py [--prompts 4] [--smollm-prompts 2] [--facts 1]

1. GPT-2-small-shaped model (12 layers, 768 wide, vocab 50257, random weights), PARAREL prompts tokenized
   with SmolLM2's tokenizer, steps 20, EleutherAI's sites and quadrature (GPT-2 pre-activation,
   linspace(0, 1, 20)) so that all three give the same scores: ``knowledge-neurons`` 0.0.2, our
   ``ig-reference`` and our ``ig``, interleaved per prompt.
2. Score check on a tiny GPT-2 *trained* on the facts of tests/helpers.py (random weights give tiny
   gradients, so equality there proves less): knowledge-neurons vs ``ig``.
3. SmolLM2-135M: ``ig-reference`` vs ``ig`` (paper settings), and the approximate methods against ``ig``
   (Spearman of scores, Jaccard of refined neuron sets, speed).
4. Achieved GFLOP/s of ``ig``: FLOPs it must do (counted analytically), over its time, against a torch.matmul
   peak measured in this run at the shapes it multiplies.

Timings on a shared machine are noisy: compare the ratios (measured back to back), not the seconds.
The last line is ``speedup_vs_knowledge_neurons: <median ratio>``.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.modules.setdefault("seaborn", types.ModuleType("seaborn"))  # knowledge-neurons imports it, never uses it

from legibility import load_model  # noqa: E402
from legibility.attribution import AttributionConfig, attribute  # noqa: E402
from legibility.attribution.engine import blocks_of  # noqa: E402
from legibility.facts.pararel import load_pararel  # noqa: E402
from legibility.facts.render import render  # noqa: E402
from legibility.facts.types import Query  # noqa: E402
from legibility.neurons import NeuronConfig, knowledge_neurons  # noqa: E402

RELATIONS = ["P36", "P103", "P19", "P37", "P1376", "P17", "P140", "P364"]


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def matmul_peak(shapes: list[tuple[int, int, int]], repeats: int = 5) -> float:
    """Best GFLOP/s of torch.matmul over the given (m, k, n) shapes (forward-like and transposed)."""
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        torch.matmul(a, b)
        for _ in range(repeats):
            _, dt = timed(lambda a=a, b=b: torch.matmul(a, b))
            best = max(best, 2 * m * k * n / dt / 1e9)
    return best


def linear_flops(module: torch.nn.Module) -> int:
    """2 x multiply-adds per token of every 2-D weight in a module (nn.Linear and GPT-2's Conv1D)."""
    return sum(2 * p.numel() for name, p in module.named_parameters() if p.dim() == 2 and "weight" in name)


def fast_flops(lm, queries: list[Query], steps: int) -> float:
    """FLOPs of ``ig``: every (layer, alpha) row through blocks >= layer (matmuls + attention against the
    cache) and the head, forward + backward (input gradients only: about as much again as the forward)."""
    cfg = lm.model.config
    blocks = blocks_of(lm)
    per_block = linear_flops(blocks[0])
    d_model = lm.model.get_output_embeddings().weight.shape[1]
    vocab = lm.model.get_output_embeddings().weight.shape[0]
    heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or d_model // heads
    total = 0.0
    n_layers = len(blocks)
    for q in queries:
        ctx = len(q.input_ids)
        attn = 2 * 2 * heads * head_dim * ctx  # scores and weighted values for one query token
        for layer in range(n_layers):
            total += steps * ((n_layers - layer) * (per_block + attn) + 2 * d_model * vocab)
    return 2 * total


def kn_flops(lm, queries: list[Query], steps: int) -> float:
    """FLOPs of knowledge-neurons' get_scores: per layer a baseline forward of the prompt, then steps copies
    of the whole prompt forward (head at every position) and backward from the head down to that layer
    (input gradients only, dense over all positions)."""
    blocks = blocks_of(lm)
    per_block = linear_flops(blocks[0])
    d_model, vocab = (
        lm.model.get_output_embeddings().weight.shape[1],
        lm.model.get_output_embeddings().weight.shape[0],
    )
    head, n_layers, total = 2 * d_model * vocab, len(blocks), 0.0
    for q in queries:
        t = len(q.input_ids)
        for layer in range(n_layers):
            forward = t * (n_layers * per_block + head)
            total += forward + steps * (forward + t * ((n_layers - layer) * per_block + head))
    return total


def gpt2_small():
    import transformers as tr

    torch.manual_seed(0)
    cfg = tr.GPT2Config(n_layer=12, n_embd=768, n_head=12, vocab_size=50257, n_positions=1024)
    return tr.GPT2LMHeadModel(cfg).eval()


def pararel_queries(lm, n: int, per_fact: int = 1) -> list[Query]:
    out: list[Query] = []
    for fact in load_pararel(relations=RELATIONS, limit=3, seed=0):
        for p in render(lm, fact).prompts[:per_fact]:
            out.append(p.queries[0])
            if len(out) == n:
                return out
    return out


def kn_scores(kn, tok, q: Query, steps: int) -> torch.Tensor:
    prompt, target = tok.decode(list(q.input_ids)), tok.decode([q.target_id])
    return kn.get_scores(prompt, target, batch_size=10, steps=steps, pbar=False).detach()


def kn_compatible(tok, q: Query) -> bool:
    prompt, target = tok.decode(list(q.input_ids)), tok.decode([q.target_id])
    return tok(prompt)["input_ids"] == list(q.input_ids) and tok.encode(target) == [q.target_id]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.flatten().argsort().argsort().double()
    rb = b.flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=4, help="PARAREL prompts on the GPT-2-small model")
    ap.add_argument("--smollm-prompts", type=int, default=2, help="prompts for ig-reference vs ig on SmolLM2")
    ap.add_argument(
        "--facts", type=int, default=1, help="facts (all paraphrases) for the approximate methods"
    )
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads for every contender (1: least noisy)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from knowledge_neurons import KnowledgeNeurons

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}")
    smol = load_model("smollm2-135m")
    tok = smol.tokenizer

    # 1. GPT-2-small-shaped, side by side with knowledge-neurons --------------------------------------------
    model = gpt2_small()
    g2 = load_model(model, tok, site="eleuther")
    g2.add_special_tokens = False
    eleuther = AttributionConfig(steps=args.steps, quadrature="endpoints", batch_size=args.batch_size)
    kn = KnowledgeNeurons(model, tok, model_type="gpt2", device="cpu")
    queries = [q for q in pararel_queries(smol, 4 * args.prompts) if kn_compatible(tok, q)][: args.prompts]
    shapes = [(args.batch_size, 768, 3072), (args.batch_size, 768, 50257), (args.batch_size, 3072, 768)]
    peak = matmul_peak(shapes)
    print(f"matmul peak (best of shapes used): {peak:.1f} GFLOP/s")
    print(f"\n[gpt2-small random] {len(queries)} prompts, steps {args.steps}")
    print(
        "tokens  t_kn     t_ref    t_fast   kn/fast  flop ratio  ref/fast  max|fast-kn|  max|fast-ref|  max|score|"
    )
    r_kn, r_ref, d_kn, d_ref, fast_time, gflop = [], [], [], [], 0.0, 0.0
    for q in queries:
        s_kn, t_kn = timed(lambda q=q: kn_scores(kn, tok, q, args.steps))
        s_ref, t_ref = timed(lambda q=q: attribute(g2, [q], "ig-reference", eleuther)[0])
        s_fast, t_fast = timed(lambda q=q: attribute(g2, [q], "ig", eleuther)[0])
        r_kn.append(t_kn / t_fast)
        r_ref.append(t_ref / t_fast)
        d_kn.append(float((s_fast - s_kn).abs().max()))
        d_ref.append(float((s_fast - s_ref).abs().max()))
        fast_time += t_fast
        gflop += fast_flops(g2, [q], args.steps) / 1e9
        print(
            f"{len(q.input_ids):6d}  {t_kn:7.2f}  {t_ref:7.2f}  {t_fast:7.2f}  {r_kn[-1]:7.1f}"
            f"  {kn_flops(g2, [q], args.steps) / fast_flops(g2, [q], args.steps):10.1f}  {r_ref[-1]:8.1f}"
            f"  {d_kn[-1]:12.2e}  {d_ref[-1]:13.2e}  {float(s_kn.abs().max()):.2e}"
        )
    achieved = gflop / fast_time
    peak = max(peak, matmul_peak(shapes))  # the machine is shared: keep the best peak seen in this run
    print(f"median kn/fast {statistics.median(r_kn):.1f}x, ref/fast {statistics.median(r_ref):.1f}x")
    print(f"ig achieved {achieved:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of the matmul peak")

    # 2. equal scores on a trained tiny GPT-2 ------------------------------------------------------------------
    from helpers import tiny_facts
    from trained import trained_gpt2

    tmodel, ttok = trained_gpt2()
    tlm = load_model(tmodel, ttok, site="eleuther")
    tkn = KnowledgeNeurons(tmodel, ttok, model_type="gpt2", device="cpu")
    tq = [p.queries[0] for f in tiny_facts()[:4] for p in render(tlm, f).prompts]
    tq = [q for q in tq if kn_compatible(ttok, q)]
    diffs, tops = [], []
    for q in tq:
        a = kn_scores(tkn, ttok, q, args.steps)
        b = attribute(tlm, [q], "ig", eleuther)[0]
        diffs.append(float((a - b).abs().max()))
        tops.append(float(a.abs().max()))
    print(
        f"\n[trained tiny gpt2] {len(tq)} prompts: max|ig-kn| {max(diffs):.2e}, "
        f"max relative {max(d / t for d, t in zip(diffs, tops, strict=True)):.2e} (max |score| {max(tops):.2e})"
    )

    # 3. SmolLM2: reference vs fast, approximate methods ---------------------------------------------------------
    paper = AttributionConfig(steps=args.steps, batch_size=args.batch_size)
    sq = pararel_queries(smol, args.smollm_prompts)
    print(f"\n[smollm2-135m] {len(sq)} prompts, steps {args.steps}")
    ratios, sdiff, stime, sflop = [], [], 0.0, 0.0
    for q in sq:
        s_ref, t_ref = timed(lambda q=q: attribute(smol, [q], "ig-reference", paper)[0])
        s_fast, t_fast = timed(lambda q=q: attribute(smol, [q], "ig", paper)[0])
        ratios.append(t_ref / t_fast)
        sdiff.append(float((s_fast - s_ref).abs().max() / s_ref.abs().max()))
        stime += t_fast
        sflop += fast_flops(smol, [q], args.steps) / 1e9
        print(f"tokens {len(q.input_ids)}: ref {t_ref:.2f} s, ig {t_fast:.2f} s, ratio {ratios[-1]:.1f}x")
    speak = matmul_peak(
        [(args.batch_size, 576, 1536), (args.batch_size, 576, 49152), (args.batch_size, 1536, 576)]
    )
    print(
        f"median ref/fast {statistics.median(ratios):.1f}x, max relative diff {max(sdiff):.1e}; "
        f"ig {sflop / stime:.1f} GFLOP/s = {100 * sflop / stime / speak:.0f}% of matmul peak {speak:.1f}"
    )
    facts = [
        f for f in load_pararel(relations=RELATIONS, limit=3, seed=0) if len(render(smol, f).prompts) >= 3
    ]
    methods = ["ig", "ig-gauss", "grad-x-act", "ig-prefilter"]
    times = dict.fromkeys(methods, 0.0)
    rho = {m: [] for m in methods[1:]}
    jac = {m: [] for m in methods[1:]}
    for fact in facts[: args.facts]:
        fq = [p.queries[0] for p in render(smol, fact).prompts]
        sets = {}
        for m in methods:
            scores, dt = timed(lambda m=m, fq=fq: attribute(smol, fq, m, paper))
            times[m] += dt
            sets[m] = set(knowledge_neurons(fact.id, fact.relation, scores, NeuronConfig()).neurons)
            if m == "ig":
                exact = scores
            else:
                rho[m] += [spearman(a, b) for a, b in zip(scores, exact, strict=True)]
                jac[m].append(jaccard(sets[m], sets["ig"]))
        print(f"fact {fact.id}: {len(fq)} prompts, refined ig neurons {len(sets['ig'])}")
    for m in methods[1:]:
        print(
            f"{m:13s} spearman {statistics.median(rho[m]):.3f}  jaccard {statistics.mean(jac[m]):.2f}  "
            f"speed vs ig {times['ig'] / times[m]:.1f}x"
        )
    print(f"speedup_vs_knowledge_neurons: {statistics.median(r_kn):.1f}")


if __name__ == "__main__":
    main()
