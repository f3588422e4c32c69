"""FFN neurons read as key-value memories (Geva et al., 2021; 2022): neuron cards.

A neuron's *key* decides when it fires; its *value* vector is what it writes into the residual stream.
A card shows (1) the tokens the value vector promotes and suppresses when projected onto the vocabulary
with the unembedding (``W_U @ v``, no final norm, as in Geva et al., 2022), (2) the contexts that activate
the neuron most, over fact prompts (answer position) and a text sample (every position), and (3) an
*agreement* score: the share of the top-activating contexts whose next token (the target, for fact prompts;
for masked LMs the token at the position) is among the value vector's top-k promoted tokens, next to the
same share over every context examined (its chance level). Agreement far above chance means what triggers
the neuron and what it writes agree, as Geva et al. found in upper layers.

Gated-MLP neurons (``act(gate) * up``) can fire strongly *negative* on the very prompts they serve; what they
write there is ``activation * v``. A card therefore uses the neuron's *serving sign* (the sign of its
activation on the fact prompts it is read over, see :func:`serving_sign`): contexts are ranked by
``sign * activation`` and the promoted/suppressed tokens are those of ``sign * v``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from legibility.editing.values import embedding_matrix, value_vector
from legibility.errors import LegibilityError
from legibility.facts.types import PromptQueries
from legibility.metrics.text import SAMPLE_TEXT
from legibility.models.loading import LoadedModel


@dataclass(frozen=True)
class CardConfig:
    """What a neuron card shows."""

    top_tokens: int = 10  # k: promoted (and suppressed) tokens listed, and used for the agreement score
    top_contexts: int = 10  # number of top-activating contexts listed
    agreement_contexts: int = 20  # the agreement score is measured on this many top-activating contexts
    max_tokens: int = 64  # text lines are cut to this many tokens (tiny models have short position tables)
    batch_size: int = 32  # rows per forward pass


@dataclass(frozen=True)
class TokenScore:
    token: str  # decoded token
    id: int
    logit: float  # sign * (W_U @ v)[id], sign being the card's serving sign


@dataclass(frozen=True)
class Context:
    """One place where the neuron was read."""

    text: str  # the input up to and including the token at which the neuron was read
    activation: float
    next_token: str  # the token predicted there: the fact's target, or the text's next token
    source: str  # "facts" or "text"
    promoted: bool  # next_token is among the value vector's top-k promoted tokens


@dataclass
class NeuronCard:
    model: str
    layer: int
    index: int
    value_norm: float  # ||v||
    promoted: list[TokenScore]  # top of sign * W_U @ v
    suppressed: list[TokenScore]  # bottom of sign * W_U @ v
    contexts: list[Context]  # top contexts by sign * activation, highest first
    agreement: float | None  # share of the top agreement_contexts whose next token is promoted
    agreement_chance: float | None  # the same share over every context examined
    n_contexts: int = 0  # contexts examined
    notes: list[str] = field(default_factory=list)
    sign: int = 1  # serving sign: -1 when the neuron fires negatively on the facts it serves


def value_logits(lm: LoadedModel, layer: int, index: int) -> Tensor:
    """The value vector projected onto the vocabulary: W_U @ v, [vocab]."""
    unembed = embedding_matrix(lm, "output").detach()  # [vocab, d_model]
    v = value_vector(lm, layer, index)  # [d_model]
    if unembed.shape[1] != v.shape[0]:
        raise LegibilityError(
            f"the unembedding has width {unembed.shape[1]} but value vectors have {v.shape[0]}"
        )
    return unembed.float() @ v.float()


def _decode(lm: LoadedModel, token_id: int) -> str:
    return str(lm.tokenizer.decode([token_id]))  # type: ignore[attr-defined]


def _token_scores(lm: LoadedModel, logits: Tensor, ids: Tensor) -> list[TokenScore]:
    return [TokenScore(_decode(lm, int(i)), int(i), float(logits[i])) for i in ids]


class _Stop(Exception):
    """Raised by the recording hook: nothing after the neuron's layer is needed."""


@torch.no_grad()
def _read(lm: LoadedModel, rows: list[list[int]], layer: int, index: int, batch_size: int) -> list[Tensor]:
    """Activation of the neuron at every position of every row: one [len(row)] tensor per row. The forward
    stops at the neuron's layer (no later layers, no vocabulary projection)."""
    out: list[Tensor] = []
    pad = getattr(lm.tokenizer, "pad_token_id", None) or 0
    device = next(lm.model.parameters()).device
    for start in range(0, len(rows), batch_size):
        chunk = rows[start : start + batch_size]
        width = max(len(r) for r in chunk)
        ids = torch.full((len(chunk), width), int(pad), dtype=torch.long, device=device)
        mask = torch.zeros_like(ids)
        for i, r in enumerate(chunk):
            ids[i, : len(r)] = torch.tensor(r, device=device)
            mask[i, : len(r)] = 1
        store: dict[str, Tensor] = {}

        def record(acts: Tensor, store: dict[str, Tensor] = store) -> Tensor:
            store["acts"] = acts[..., index].float()  # [batch, pos]
            raise _Stop

        with contextlib.suppress(_Stop), lm.sites.patch({layer: record}):
            lm.model(input_ids=ids, attention_mask=mask)
        out.extend(store["acts"][i, : len(r)] for i, r in enumerate(chunk))
    return out


def _text_rows(lm: LoadedModel, text: str, max_tokens: int) -> list[list[int]]:
    rows = []
    for line in text.splitlines():
        if line.strip():
            ids = lm.encode(line.strip())[:max_tokens]
            if len(ids) >= 2:
                rows.append(ids)
    return rows


def neuron_card(
    lm: LoadedModel,
    layer: int,
    index: int,
    prompts: Sequence[PromptQueries] = (),
    text: str = SAMPLE_TEXT,
    config: CardConfig | None = None,
) -> NeuronCard:
    """The key-value card of neuron (``layer``, ``index``), read over rendered fact ``prompts`` (answer
    position; target = next token) and every position of ``text`` (one line per input)."""
    cfg = config or CardConfig()
    # (activation, text ids up to the position, next token id, source)
    found: list[tuple[float, list[int], int, str]] = []
    queries = [q for p in prompts for q in p.queries[:1]]
    if queries:
        acts = _read(lm, [list(q.input_ids) for q in queries], layer, index, cfg.batch_size)
        for q, a in zip(queries, acts, strict=True):
            found.append(
                (float(a[q.answer_pos]), list(q.input_ids[: q.answer_pos + 1]), q.target_id, "facts")
            )
    sign = serving_sign([f[0] for f in found], cfg.agreement_contexts)
    # what the neuron writes on the facts it serves is activation * v: with a negative activation the
    # promoted tokens are those of -v
    logits = sign * value_logits(lm, layer, index)  # [vocab]
    k = min(cfg.top_tokens, logits.numel())
    top_ids = torch.topk(logits, k).indices
    promoted_set = {int(i) for i in top_ids}
    card = NeuronCard(
        lm.name,
        layer,
        index,
        float(value_vector(lm, layer, index).float().norm()),
        _token_scores(lm, logits, top_ids),
        _token_scores(lm, logits, torch.topk(-logits, k).indices),
        [],
        None,
        None,
        sign=sign,
    )
    if sign < 0:
        card.notes.append(
            "the neuron fires negatively on the fact prompts it serves: contexts are ranked by -activation "
            "and the promoted/suppressed tokens are those of -v (what it writes there)"
        )
    rows = _text_rows(lm, text, cfg.max_tokens)
    if rows:
        masked = lm.kind == "masked"
        specials = set(getattr(lm.tokenizer, "all_special_ids", []) or [])
        for ids, a in zip(rows, _read(lm, rows, layer, index, cfg.batch_size), strict=True):
            for t in range(len(ids) - (0 if masked else 1)):
                nxt = ids[t] if masked else ids[t + 1]
                if nxt in specials:
                    continue
                found.append((float(a[t]), ids[: t + 1], nxt, "text"))
    card.n_contexts = len(found)
    if not found:
        card.notes.append("no contexts given: pass fact prompts or text to see what activates the neuron")
        return card
    found.sort(key=lambda f: -sign * f[0])
    for act, ids, nxt, source in found[: cfg.top_contexts]:
        text_ = str(lm.tokenizer.decode(ids, skip_special_tokens=True))  # type: ignore[attr-defined]
        card.contexts.append(Context(text_, act, _decode(lm, nxt), source, nxt in promoted_set))
    head = found[: cfg.agreement_contexts]
    card.agreement = sum(f[2] in promoted_set for f in head) / len(head)
    card.agreement_chance = sum(f[2] in promoted_set for f in found) / len(found)
    return card


def serving_sign(fact_activations: Sequence[float], top: int = 20) -> int:
    """+1 or -1: the sign of the summed activation over the ``top`` fact prompts where the neuron is
    strongest (largest |activation|). Gated-MLP neurons (act(gate) * up) can serve their facts with strongly
    negative activations; +1 when no fact prompt was read."""
    strongest = sorted(fact_activations, key=abs, reverse=True)[:top]
    return -1 if sum(strongest) < 0 else 1


def card_text(card: NeuronCard) -> str:
    """A plain-text card for the terminal."""
    lines = [
        f"neuron L{card.layer}:{card.index} of {card.model}   |v| = {card.value_norm:.3f}"
        + ("   serving sign: negative (lists are of -v)" if card.sign < 0 else ""),
        "value promotes:  " + "  ".join(f"{t.token!r} {t.logit:+.2f}" for t in card.promoted),
        "value suppresses:" + "  ".join(f" {t.token!r} {t.logit:+.2f}" for t in card.suppressed),
    ]
    if card.agreement is not None:
        lines.append(
            f"agreement: {card.agreement:.2f} of the top contexts' next tokens are promoted "
            f"(chance over all {card.n_contexts} contexts: {card.agreement_chance:.3f})"
        )
    if card.contexts:
        lines.append("top-activating contexts (activation, source, context -> next token; * = promoted):")
        for c in card.contexts:
            mark = "*" if c.promoted else " "
            lines.append(f"  {c.activation:+8.3f} {c.source:5s} {c.text[-70:]!r} -> {c.next_token!r} {mark}")
    lines.extend(f"note: {n}" for n in card.notes)
    return "\n".join(lines)


def fact_neuron_cards(
    lm: LoadedModel,
    neurons: Sequence[tuple[int, int]],
    prompts: Sequence[PromptQueries],
    text: str = SAMPLE_TEXT,
    config: CardConfig | None = None,
) -> list[NeuronCard]:
    """Cards for a fact's knowledge neurons, read over the given fact prompts and text."""
    return [neuron_card(lm, layer, index, prompts, text, config) for layer, index in neurons]


def write_run_cards(run_dir: str | Path, n_facts: int = 3, per_fact: int = 5) -> Path:
    """``cards.json`` of a finished scoring run: the cards of up to ``per_fact`` knowledge neurons of its
    first ``n_facts`` facts with neurons, read over the fact's prompts and the sample text. The run's model
    is loaded as the run loaded it; the run report renders the file without loading anything."""
    from legibility.facts.render import render
    from legibility.facts.types import Fact
    from legibility.models.loading import load_model
    from legibility.run import check_finished
    from legibility.store import atomic_write_json

    run = Path(run_dir)
    card, records = check_finished(run)
    settings = card.get("settings", {})
    out: list[dict] = []
    if n_facts and settings.get("model"):
        lm = load_model(settings["model"], site=settings.get("site") or "ffn")
        for rec in [r for r in records if r["neurons"]][:n_facts]:
            prompts = []
            if lm.kind == "causal":  # stored texts end where the object begins; masked ones hold the mask
                for text in rec["prompts"]:
                    fact = Fact(rec["subject"], rec["relation"], rec["object"], (text + " [Y]",))
                    prompts += render(lm, fact).prompts
            cards = fact_neuron_cards(lm, [tuple(n) for n in rec["neurons"]][:per_fact], prompts)
            out.append(
                {
                    "fact": [rec["subject"], rec["relation"], rec["object"]],
                    "cards": [asdict(c) for c in cards],
                }
            )
    atomic_write_json(run / "cards.json", out)
    return run / "cards.json"
