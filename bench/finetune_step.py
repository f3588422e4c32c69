"""Step time and peak memory of `legibility finetune`'s update modes on the embedded SmolLM2-135M.

Runs one process per update mode (full, ffn, lora) *at the same time*, so every mode sees the same load
on a shared machine; each does ``--steps`` optimizer steps of the language-model loss on a batch of
``--batch`` x ``--seq`` tokens plus, with ``--objective``, the specific-suppressability objective on 8
own/partner prompt pairs, and prints its step times and peak resident memory. Report ratios between modes
of one invocation, not absolute times.

    python bench/finetune_step.py --steps 4 --objective
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(mode: str, steps: int, batch: int, seq: int, objective: bool) -> dict:
    import torch
    import torch.nn.functional as F

    from legibility import load_model
    from legibility.facts.pararel import load_pararel
    from legibility.facts.render import render
    from legibility.forward import make_batch
    from legibility.training.adapters import configure_updates
    from legibility.training.regularizers.specific import SpecificConfig, specific_loss

    torch.manual_seed(0)
    lm = load_model("smollm2-135m", device="cpu")
    n = configure_updates(lm.model, mode, rank=8)  # type: ignore[arg-type]
    opt = torch.optim.AdamW([p for p in lm.model.parameters() if p.requires_grad], lr=1e-5)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(100, 40000, (batch, seq + 1), generator=g)
    qs = [pq.queries[0] for f in load_pararel(None, ["P36"], 40) for pq in render(lm, f).prompts][:16]
    own, partners = make_batch(lm, qs[:8]), make_batch(lm, qs[8:16])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        lm.model.train()
        logits = lm.model(input_ids=x[:, :-1]).logits
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1))
        if objective:
            loss = loss + specific_loss(lm, own, partners, SpecificConfig(k=4, facts_per_step=8))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"mode": mode, "trainable": n, "step_s": [round(t, 2) for t in times], "peak_rss_mb": round(rss)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--objective", action="store_true")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.one, args.steps, args.batch, args.seq, args.objective)))  # noqa: T201
        return 0
    base = [
        sys.executable,
        __file__,
        "--steps",
        str(args.steps),
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
    ]
    base += ["--objective"] if args.objective else []
    procs = [
        subprocess.Popen([*base, "--one", m], stdout=subprocess.PIPE, text=True)
        for m in ("full", "ffn", "lora")
    ]
    rows = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    ref = sum(rows[0]["step_s"][1:]) / max(len(rows[0]["step_s"]) - 1, 1)
    for r in rows:
        mean = sum(r["step_s"][1:]) / max(len(r["step_s"]) - 1, 1)  # the first step warms up
        print(
            f"{r['mode']:5s} trainable {r['trainable']:>11,d}  step {mean:7.1f} s (x{mean / ref:.2f} of full)  "  # noqa: T201
            f"peak RSS {r['peak_rss_mb']:,d} MB  steps {r['step_s']}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
