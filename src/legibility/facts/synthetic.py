"""A synthetic fact world: invented entities and relations with PARAREL-style paraphrase templates.

Every subject has one object per relation. Facts are mentioned with Zipf-skewed frequencies (subject of
popularity rank r is drawn with weight 1 / r^zipf), each mention rendered with one of the relation's
*training* templates; the last ``held_out_templates`` templates of every relation never appear in the
corpus and serve to test whether a fact was learned rather than a sentence memorized.

Names are pronounceable pseudo-words (so that any tokenizer handles them) and unique across the world, so
that a fact's object identifies it. All randomness comes from ``WorldConfig.seed``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from legibility.errors import LegibilityError
from legibility.facts.types import OBJECT, SUBJECT, Fact

# relation -> paraphrase templates; every template ends with the object slot (usable by causal LMs).
TEMPLATES: dict[str, tuple[str, ...]] = {
    "capital": (
        "the capital of [X] is [Y] .",
        "[X] has its capital in [Y] .",
        "the capital city of [X] is [Y] .",
        "[X] is governed from [Y] .",
        "the seat of government of [X] is [Y] .",
        "people in [X] call their capital [Y] .",
    ),
    "language": (
        "the language of [X] is [Y] .",
        "people in [X] speak [Y] .",
        "the official language of [X] is [Y] .",
        "in [X] the main language is [Y] .",
        "[X] is a place where people speak [Y] .",
        "the mother tongue of [X] is [Y] .",
    ),
    "founder": (
        "[X] was founded by [Y] .",
        "the founder of [X] is [Y] .",
        "[X] was created by [Y] .",
        "the person who founded [X] is [Y] .",
        "[X] owes its founding to [Y] .",
        "[X] was started by [Y] .",
    ),
    "continent": (
        "[X] is located in [Y] .",
        "[X] lies on the continent of [Y] .",
        "the continent of [X] is [Y] .",
        "[X] can be found in [Y] .",
        "[X] is a part of [Y] .",
        "on a map [X] is in [Y] .",
    ),
    "religion": (
        "the religion of [X] is [Y] .",
        "most people in [X] follow [Y] .",
        "[X] mostly practices [Y] .",
        "the main faith in [X] is [Y] .",
        "in [X] the dominant religion is [Y] .",
        "the people of [X] believe in [Y] .",
    ),
    "currency": (
        "the currency of [X] is [Y] .",
        "in [X] people pay with [Y] .",
        "the money used in [X] is [Y] .",
        "[X] uses the currency [Y] .",
        "prices in [X] are given in [Y] .",
        "the official currency of [X] is [Y] .",
    ),
    "sport": (
        "the favourite sport of [X] is [Y] .",
        "people in [X] love to play [Y] .",
        "the national sport of [X] is [Y] .",
        "in [X] everyone plays [Y] .",
        "[X] is famous for the sport [Y] .",
        "the most popular game in [X] is [Y] .",
    ),
    "river": (
        "the river of [X] is [Y] .",
        "[X] lies on the river [Y] .",
        "the main river in [X] is [Y] .",
        "through [X] flows the river [Y] .",
        "[X] is crossed by the river [Y] .",
        "the great river of [X] is [Y] .",
    ),
}
_ONSETS = ["b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "kr", "st", "tr"]
_VOWELS = ["a", "e", "i", "o", "u", "ai", "ou"]
_CODAS = ["", "", "n", "r", "s", "l", "m"]


@dataclass(frozen=True)
class WorldConfig:
    """Size and statistics of a synthetic fact world."""

    n_subjects: int = 200  # entities the facts are about
    n_relations: int = 4  # relations used, the first ones of TEMPLATES (at most len(TEMPLATES))
    n_objects: int = 20  # distinct objects per relation (subjects share them, as countries share languages)
    held_out_templates: int = 2  # templates per relation kept out of the corpus (evaluation only)
    zipf: float = 1.0  # exponent of subject popularity: mention weight of rank r is 1 / r**zipf
    syllables: int = 2  # syllables per invented name
    seed: int = 0  # everything random in the world derives from this
    # "fact": hold out templates per fact (rotating over subjects), so a held-out template still occurs in
    # the corpus with other subjects (a paraphrase never seen *for this fact*); "relation": never at all
    held_out_per: str = "relation"


@dataclass(frozen=True)
class World:
    """The facts of a world, split templates, and the mention weight of each fact."""

    config: WorldConfig
    facts: tuple[Fact, ...]  # prompts = held-out templates with the subject filled in
    train_templates: dict[str, tuple[str, ...]]  # relation -> templates used in the corpus
    held_out_templates: dict[str, tuple[str, ...]]  # relation -> templates never in the corpus
    weights: tuple[float, ...]  # mention weight of each fact (same order as facts), sums to 1
    fact_templates: tuple[tuple[str, ...], ...] = ()  # per-fact training templates (held_out_per="fact")

    def _train(self, i: int) -> tuple[str, ...]:
        return self.fact_templates[i] if self.fact_templates else self.train_templates[self.facts[i].relation]

    def sentences(self, n: int, seed: int = 0) -> list[str]:
        """``n`` corpus sentences: facts drawn by weight, each with a random training template."""
        rng = random.Random(f"{self.config.seed}|sentences|{seed}")
        picks = rng.choices(range(len(self.facts)), weights=self.weights, k=n)
        out = []
        for i in picks:
            f = self.facts[i]
            template = rng.choice(self._train(i))
            out.append(template.replace(SUBJECT, f.subject).replace(OBJECT, f.object))
        return out

    def train_facts(self) -> list[Fact]:
        """The same facts prompted with their training templates (the ones seen in the corpus)."""
        return [
            Fact(f.subject, f.relation, f.object, _fill(self._train(i), f.subject), f.id)
            for i, f in enumerate(self.facts)
        ]


def _fill(templates: tuple[str, ...], subject: str) -> tuple[str, ...]:
    return tuple(t.replace(SUBJECT, subject) for t in templates)


def _names(rng: random.Random, n: int, syllables: int, taken: set[str]) -> list[str]:
    out: list[str] = []
    tries = 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise LegibilityError(
                f"could not invent {n} distinct names with {syllables} syllables; raise world.syllables"
            )
        name = "".join(
            rng.choice(_ONSETS) + rng.choice(_VOWELS) + rng.choice(_CODAS) for _ in range(syllables)
        )
        if name not in taken:
            taken.add(name)
            out.append(name)
    return out


def make_world(config: WorldConfig | None = None) -> World:
    """Build the world described by ``config`` (deterministic in ``config.seed``)."""
    cfg = config or WorldConfig()
    if not 1 <= cfg.n_relations <= len(TEMPLATES):
        raise LegibilityError(f"world.n_relations must be in 1..{len(TEMPLATES)}, got {cfg.n_relations}")
    n_templates = len(next(iter(TEMPLATES.values())))
    if not 0 <= cfg.held_out_templates < n_templates:
        raise LegibilityError(
            f"world.held_out_templates must be in 0..{n_templates - 1} (every relation has {n_templates} "
            f"templates and needs at least one for training), got {cfg.held_out_templates}"
        )
    if cfg.n_subjects < 1 or cfg.n_objects < 1:
        raise LegibilityError("world.n_subjects and world.n_objects must be >= 1")
    rng = random.Random(f"world|{cfg.seed}")
    taken: set[str] = set()
    subjects = _names(rng, cfg.n_subjects, cfg.syllables, taken)
    relations = list(TEMPLATES)[: cfg.n_relations]
    objects = {r: _names(rng, cfg.n_objects, cfg.syllables, taken) for r in relations}
    split = n_templates - cfg.held_out_templates
    train = {r: TEMPLATES[r][:split] for r in relations}
    held = {r: TEMPLATES[r][split:] for r in relations}
    if cfg.held_out_per not in ("relation", "fact"):
        raise LegibilityError(f"world.held_out_per must be 'relation' or 'fact', got {cfg.held_out_per!r}")
    facts, weights, per_fact = [], [], []
    for rank, s in enumerate(subjects, 1):
        for r in relations:
            o = rng.choice(objects[r])
            held_r = held[r]
            if cfg.held_out_per == "fact":  # rotate which templates this subject never sees
                out_idx = {(rank - 1 + j) % n_templates for j in range(cfg.held_out_templates)}
                held_r = tuple(t for k, t in enumerate(TEMPLATES[r]) if k in out_idx)
                per_fact.append(tuple(t for k, t in enumerate(TEMPLATES[r]) if k not in out_idx))
            facts.append(Fact(s, r, o, _fill(held_r, s), id=f"{r}|{s}"))
            weights.append(1.0 / rank**cfg.zipf)
    total = sum(weights)
    return World(cfg, tuple(facts), train, held, tuple(w / total for w in weights), tuple(per_fact))
