"""Attribution speed and agreement, side by side in one run (not a test).

    python bench/attribution.py --device cpu [--xl] [--kn-prompts 1] [--batch 8] [--facts 4]
    python bench/attribution.py --device cuda --xl --kn-prompts 3 --batch 64 --facts 64

1. GPT-2-small shape (12 x 768, vocab 50257), and with ``--xl`` the GPT-2-XL shape (48 x 1600), random
   weights, PARAREL prompts tokenized with SmolLM2's tokenizer, steps 20, EleutherAI's sites and
   quadrature (GPT-2 pre-activation, linspace(0, 1, 20)) so that both give the same scores: EleutherAI
   ``knowledge-neurons`` 0.0.2 and our ``ig`` on the same device, per prompt (one prompt per call) and for
   a batch of ``--batch`` prompts in one call. Printed beside the measured ratios: the analytic FLOP ratio
   and the share of the fp32 matmul peak measured in this run (TF32 off throughout).
2. Score check on a tiny GPT-2 *trained* on the facts of tests/helpers.py (random weights give tiny
   gradients, so equality there proves less): knowledge-neurons vs ``ig``.
3. SmolLM2-135M, paper settings: facts per hour of the engine before packing (``ig-per-query``, one fact per
   call, as the neuron stage ran it) against ``ig`` with all facts' prompts in one call, with the largest
   score difference between them.
4. Reduced precision (``ig-bf16``; ``ig-tf32`` on CUDA) and, with ``--approximate``, the approximate
   methods against ``ig`` on SmolLM2: Spearman of scores, Jaccard of refined neuron sets, speed.

Timings on a shared machine are noisy: compare the ratios (measured back to back), not the seconds.
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
from legibility.attribution import AttributionConfig, attribute, attribute_prompts, engine  # noqa: E402
from legibility.attribution.engine import blocks_of  # noqa: E402
from legibility.devices import resolve_device  # noqa: E402
from legibility.facts.pararel import load_pararel  # noqa: E402
from legibility.facts.render import render  # noqa: E402
from legibility.facts.types import Query  # noqa: E402
from legibility.neurons import NeuronConfig, knowledge_neurons  # noqa: E402

RELATIONS = ["P36", "P103", "P19", "P37", "P1376", "P17", "P140", "P364"]
DEVICE = torch.device("cpu")


def sync() -> None:
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def timed(fn):
    sync()
    t = time.perf_counter()
    out = fn()
    sync()
    return out, time.perf_counter() - t


def matmul_peak(shapes: list[tuple[int, int, int]], repeats: int = 5) -> float:
    """Best fp32 GFLOP/s of torch.matmul over the given (m, k, n) shapes (TF32 off)."""
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=DEVICE), torch.randn(k, n, device=DEVICE)
        torch.matmul(a, b)
        for _ in range(repeats):
            _, dt = timed(lambda a=a, b=b: torch.matmul(a, b))
            best = max(best, 2 * m * k * n / dt / 1e9)
    return best


def linear_flops(module: torch.nn.Module) -> int:
    """2 x multiply-adds per token of every 2-D weight in a module (nn.Linear and GPT-2's Conv1D)."""
    return sum(2 * p.numel() for name, p in module.named_parameters() if p.dim() == 2 and "weight" in name)


def fast_flops(lm, queries: list[Query], steps: int) -> float:
    """FLOPs of ``ig``: every (layer, alpha) row through the output projection of block ``layer`` (rows
    start at the site where the family allows), then blocks > layer (matmuls + attention against the
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
    skip = engine.skips_to_site(lm, engine.tail_for(lm))
    site = 2 * d_model * lm.sites.n_neurons  # the output projection of the path point
    for q in queries:
        ctx = len(q.input_ids)
        attn = 2 * 2 * heads * head_dim * ctx  # scores and weighted values for one query token
        for layer in range(n_layers):
            first = site if skip else per_block + attn
            rest = (n_layers - layer - 1) * (per_block + attn)
            total += steps * (first + rest + 2 * d_model * vocab)
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


def gpt2(n_layer: int, n_embd: int):
    import transformers as tr

    torch.manual_seed(0)
    cfg = tr.GPT2Config(
        n_layer=n_layer, n_embd=n_embd, n_head=n_embd // 64, vocab_size=50257, n_positions=1024
    )
    return tr.GPT2LMHeadModel(cfg).eval().to(DEVICE)


def pararel_queries(lm, n: int, per_fact: int = 1) -> list[Query]:
    out: list[Query] = []
    for fact in load_pararel(relations=RELATIONS, limit=max(3, n), seed=0):
        for p in render(lm, fact).prompts[:per_fact]:
            out.append(p.queries[0])
            if len(out) == n:
                return out
    return out


def kn_scores(kn, tok, q: Query, steps: int) -> torch.Tensor:
    prompt, target = tok.decode(list(q.input_ids)), tok.decode([q.target_id])
    return kn.get_scores(prompt, target, batch_size=steps, steps=steps, pbar=False).detach()


def kn_compatible(tok, q: Query) -> bool:
    prompt, target = tok.decode(list(q.input_ids)), tok.decode([q.target_id])
    return tok(prompt)["input_ids"] == list(q.input_ids) and tok.encode(target) == [q.target_id]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.flatten().argsort().argsort().double()
    rb = b.flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def versus_knowledge_neurons(name: str, model, tok, pool: list[Query], args, peak: float) -> float:
    """Section 1 for one shape; returns the batched speedup over knowledge-neurons."""
    from knowledge_neurons import KnowledgeNeurons

    lm = load_model(model, tok, site="eleuther")
    lm.add_special_tokens = False
    cfg = AttributionConfig(steps=args.steps, quadrature="endpoints", max_rows=args.max_rows)
    kn = KnowledgeNeurons(model, tok, model_type="gpt2", device=str(DEVICE))
    queries = pool[: args.kn_prompts]
    batch = (pool * (args.batch // len(pool) + 1))[: args.batch]
    kn_scores(kn, tok, queries[0], args.steps)  # warm-up (CUDA kernels, allocator)
    attribute(lm, [queries[0]], "ig", cfg)
    print(
        f"\n[{name} random, {DEVICE}] {len(queries)} prompts alone, then a batch of {len(batch)}; steps {args.steps}"
    )
    print("tokens  t_kn      t_ig     kn/ig  flop ratio  max|ig-kn|/max|score|")
    t_kn_all, t_ig_all, ratios = [], [], []
    for q in queries:
        s_kn, t_kn = timed(lambda q=q: kn_scores(kn, tok, q, args.steps))
        s_ig, t_ig = timed(lambda q=q: attribute(lm, [q], "ig", cfg)[0])
        t_kn_all.append(t_kn)
        t_ig_all.append(t_ig)
        flop_ratio = kn_flops(lm, [q], args.steps) / fast_flops(lm, [q], args.steps)
        ratios.append(flop_ratio)
        print(
            f"{len(q.input_ids):6d}  {t_kn:7.3f}  {t_ig:7.3f}  {t_kn / t_ig:7.1f}  {flop_ratio:10.1f}"
            f"  {rel_diff(s_ig.cpu(), s_kn.cpu()):.1e}"
        )
    _, t_batch = timed(lambda: attribute(lm, batch, "ig", cfg))
    kn_per = statistics.mean(t_kn_all)
    batch_flops = fast_flops(lm, batch, args.steps)
    achieved = batch_flops / t_batch / 1e9
    batch_ratio = kn_flops(lm, batch, args.steps) / batch_flops
    print(
        f"prompt lengths: timed alone {statistics.mean(len(q.input_ids) for q in queries):.1f} tokens, "
        f"batch {statistics.mean(len(q.input_ids) for q in batch):.1f}; analytic FLOP ratio over the batch "
        f"{batch_ratio:.1f}x"
    )
    print(
        f"per prompt: knowledge-neurons {kn_per:.3f} s, ig alone {statistics.mean(t_ig_all):.3f} s "
        f"({kn_per / statistics.mean(t_ig_all):.1f}x), ig in a batch of {len(batch)} {t_batch / len(batch):.4f} s "
        f"({kn_per * len(batch) / t_batch:.1f}x); analytic FLOP ratio {statistics.mean(ratios):.1f}x"
    )
    print(
        f"ig batch: {achieved:.1f} GFLOP/s = {100 * achieved / peak:.0f}% of the fp32 matmul peak "
        f"{peak:.1f} GFLOP/s measured in this run"
    )
    return kn_per * len(batch) / t_batch


def trained_equality(args) -> None:
    from knowledge_neurons import KnowledgeNeurons

    from helpers import tiny_facts
    from trained import trained_gpt2

    tmodel, ttok = trained_gpt2()
    tmodel = tmodel.to(DEVICE)
    tlm = load_model(tmodel, ttok, site="eleuther")
    tkn = KnowledgeNeurons(tmodel, ttok, model_type="gpt2", device=str(DEVICE))
    cfg = AttributionConfig(steps=args.steps, quadrature="endpoints")
    tq = [p.queries[0] for f in tiny_facts()[:4] for p in render(tlm, f).prompts]
    tq = [q for q in tq if kn_compatible(ttok, q)]
    ours = attribute(tlm, tq, "ig", cfg).cpu()  # all prompts in one packed call
    diffs, tops = [], []
    for i, q in enumerate(tq):
        a = kn_scores(tkn, ttok, q, args.steps).cpu()
        diffs.append(float((a - ours[i]).abs().max()))
        tops.append(float(a.abs().max()))
    print(
        f"\n[trained tiny gpt2, {DEVICE}] {len(tq)} prompts: max|ig-kn| {max(diffs):.2e}, "
        f"max relative {max(d / t for d, t in zip(diffs, tops, strict=True)):.2e} (max |score| {max(tops):.2e})"
    )


def smollm_facts(smol, n: int):
    facts = [
        r
        for r in (render(smol, f) for f in load_pararel(relations=RELATIONS, limit=n, seed=0))
        if len(r.prompts) >= 2
    ]
    return facts[:n]


def facts_per_hour(smol, facts, args) -> dict:
    """Section 3: the engine before packing vs the packed engine, at equal scores."""
    cfg = AttributionConfig(steps=args.steps, batch_size=64, max_rows=args.max_rows)
    n_prompts = sum(len(r.prompts) for r in facts)
    print(
        f"\n[smollm2-135m, {DEVICE}] {len(facts)} facts, {n_prompts} prompts (all usable paraphrases), steps {args.steps}"
    )
    old, t_old = timed(lambda: [attribute_prompts(smol, r.prompts, "ig-per-query", cfg) for r in facts])
    new, t_new = timed(lambda: attribute_prompts(smol, [p for r in facts for p in r.prompts], "ig", cfg))
    old_t = torch.cat(old)
    diff = max(rel_diff(new[i], old_t[i]) for i in range(n_prompts))
    print(
        f"ig-per-query (one fact per call): {t_old:.1f} s = {3600 * len(facts) / t_old:.0f} facts/hour; "
        f"ig (all facts in one call): {t_new:.1f} s = {3600 * len(facts) / t_new:.0f} facts/hour; "
        f"ratio {t_old / t_new:.2f}x; max relative score difference {diff:.1e}"
    )
    if args.known_facts:
        print(
            f"projected for {args.known_facts} known facts: {args.known_facts * t_new / len(facts) / 60:.1f} min"
        )
    return {"scores": new, "time": t_new}


def agreement(smol, facts, exact: dict, args) -> None:
    """Section 4: reduced precision and approximate methods against float32 ig."""
    cfg = AttributionConfig(steps=args.steps, max_rows=args.max_rows)
    methods = ["ig-bf16"] + (["ig-tf32"] if DEVICE.type == "cuda" else [])
    if args.approximate:
        methods += ["ig-gauss", "grad-x-act", "ig-prefilter"]
    prompts = [p for r in facts for p in r.prompts]
    bounds = [0]
    for r in facts:
        bounds.append(bounds[-1] + len(r.prompts))
    ncfg = NeuronConfig()
    ref_sets = [
        set(knowledge_neurons(r.fact.id, r.fact.relation, exact["scores"][a:b].cpu(), ncfg).neurons)
        for r, a, b in zip(facts, bounds, bounds[1:], strict=False)
    ]
    print(
        f"\n[smollm2-135m, {DEVICE}] agreement with float32 ig ({len(facts)} facts; refined sets t=0.2, p=0.5; "
        f"ig found {statistics.mean(len(s) for s in ref_sets):.1f} neurons per fact)"
    )
    for m in methods:
        scores, dt = timed(lambda m=m: attribute_prompts(smol, prompts, m, cfg))
        scores = scores.cpu()
        rho = [spearman(scores[i], exact["scores"][i].cpu()) for i in range(len(prompts))]
        sets = [
            set(knowledge_neurons(r.fact.id, r.fact.relation, scores[a:b], ncfg).neurons)
            for r, a, b in zip(facts, bounds, bounds[1:], strict=False)
        ]
        jac = [jaccard(s, t) for s, t in zip(sets, ref_sets, strict=True)]
        print(
            f"{m:13s} spearman median {statistics.median(rho):.4f} (min {min(rho):.4f})  "
            f"jaccard mean {statistics.mean(jac):.2f}  speed vs ig {exact['time'] / dt:.2f}x"
        )


def main() -> None:
    global DEVICE
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N")
    ap.add_argument("--xl", action="store_true", help="also the GPT-2-XL shape (48 x 1600; slow on CPU)")
    ap.add_argument(
        "--kn-prompts", type=int, default=1, help="prompts timed one by one against knowledge-neurons"
    )
    ap.add_argument("--batch", type=int, default=8, help="prompts in the batched ig call (64 on a GPU)")
    ap.add_argument("--xl-batch", type=int, default=None, help="batch for the XL shape (default: --batch)")
    ap.add_argument("--facts", type=int, default=4, help="SmolLM2 facts (all paraphrases) for sections 3-4")
    ap.add_argument(
        "--known-facts", type=int, default=None, help="print the projected time for this many facts"
    )
    ap.add_argument("--approximate", action="store_true", help="also ig-gauss, grad-x-act, ig-prefilter")
    ap.add_argument("--skip-kn", action="store_true", help="skip sections 1-2 (knowledge-neurons)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--max-rows", type=int, default=None, help="cap on rows per chunk (default: from memory)")
    ap.add_argument("--threads", type=int, default=1, help="CPU torch threads (1: least noisy when shared)")
    args = ap.parse_args()
    DEVICE = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    # exact comparisons: true float32 matmuls (no TF32) everywhere except the labelled ig-tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.set_float32_matmul_precision("highest")
    name = (
        torch.cuda.get_device_name(DEVICE)
        if DEVICE.type == "cuda"
        else f"CPU, {torch.get_num_threads()} threads"
    )
    print(f"torch {torch.__version__}, device {DEVICE} ({name})")
    smol = load_model("smollm2-135m", device=DEVICE)
    tok = smol.tokenizer
    if not args.skip_kn:
        pool = [q for q in pararel_queries(smol, 64) if kn_compatible(tok, q)]
        big = 8192 if DEVICE.type == "cuda" else 1024
        peak = matmul_peak(
            [(big, big, big)] if DEVICE.type == "cuda" else [(64 * 20, 768, 3072), (big, big, big)]
        )
        print(f"fp32 matmul peak: {peak:.1f} GFLOP/s")
        speed = {"gpt2-small": versus_knowledge_neurons("gpt2-small", gpt2(12, 768), tok, pool, args, peak)}
        if args.xl:
            xl_args = argparse.Namespace(**{**vars(args), "batch": args.xl_batch or args.batch})
            speed["gpt2-xl"] = versus_knowledge_neurons("gpt2-xl", gpt2(48, 1600), tok, pool, xl_args, peak)
        trained_equality(args)
    facts = smollm_facts(smol, args.facts)
    exact = facts_per_hour(smol, facts, args)
    agreement(smol, facts, exact, args)
    if not args.skip_kn:
        for k, v in speed.items():
            print(f"speedup_vs_knowledge_neurons[{k}, batch]: {v:.1f}")


if __name__ == "__main__":
    main()
