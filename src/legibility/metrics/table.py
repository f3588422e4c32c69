"""The metric table: every metric a report shows or a store keeps, registered once, read by every consumer.

An entry says what a metric is called in tables and figures, which way is more interpretable, its exact
definition and where it appears (its *views*). Scorecard metrics are registered by
:mod:`legibility.metrics.scorecard` together with the function that computes them from a run's records
(the package imports it, so the table is complete whenever this module is imported);
the training lab's and probes' numbers (``val_loss``, ``fact_accuracy``, ...) are declared here, since they
are computed elsewhere but shown and stored beside the scorecard. Independent metrics keep their own
registry (:data:`legibility.metrics.spec.INDEPENDENT`) and appear under ``independent.<name>.<key>``.

Views (a consumer asks for the names of one view, in registration order):

* ``card``: the CLI scorecard and the run report's table;
* ``trial``: copied into sweep trial records and training-checkpoint scores;
* ``summary``: the sweep report's summary table;
* ``agreement``: the columns of the sweep report's metric-agreement matrix;
* ``column``: a column of the results store's SQL view ``trials_flat``;
* ``checkpoint``: tracked over a training run by ``probe-checkpoints``;
* ``frontier``: an x axis of the sweep report's frontier figures.

Adding a metric: register it (with its function, for a scorecard metric) in the module that computes it,
with the views it belongs to, and test it; nothing else changes. ``docs/extending.md`` shows it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from legibility.registry import Registry

if TYPE_CHECKING:
    from legibility.metrics.stats import Estimate

Direction = Literal["higher", "lower", "none"]  # which way is more interpretable ("none": descriptive)
Source = Literal["scorecard", "train", "probe"]  # which record of a trial holds the value
View = Literal["card", "trial", "summary", "agreement", "column", "checkpoint", "frontier"]
VIEWS: tuple[View, ...] = ("card", "trial", "summary", "agreement", "column", "checkpoint", "frontier")
# Suffix of a training run's metrics measured on the facts its objectives trained on (in-sample); the bare
# name is measured on held-out facts that no objective saw.
TRAINED_FACTS = ".trained_facts"


@dataclass(frozen=True)
class ScoreInputs:
    """What a scorecard metric is computed from: one run's (or one relation's) per-fact records."""

    records: Sequence[dict]  # knowledge-neuron records of the facts that count (enough prompts)
    effects: Sequence[dict]  # effect records of the facts that have knowledge neurons
    seed: int = 0  # bootstrap resampling
    measured: bool = True  # the run measured effects (False: neurons only, no effect metric applies)


ScoreFn = Callable[[ScoreInputs], "Estimate | None"]  # None: the metric does not apply to these records


@dataclass(frozen=True)
class MetricInfo:
    label: str  # short name for table headers and figure axes
    direction: Direction
    definition: str  # exact, one paragraph (docs/metrics.md, `legibility metrics`)
    views: frozenset[str] = field(default_factory=frozenset)
    source: Source = "scorecard"
    compute: ScoreFn | None = None  # scorecard metrics: records -> estimate
    per_relation: bool = False  # the scorecard also holds it per relation, as ``name@P36``
    # measured on facts: a training run has it for its held-out facts (the name) and, in-sample, for the
    # facts its objectives saw (the name + TRAINED_FACTS)
    fact_groups: bool = True


METRICS: Registry[MetricInfo] = Registry("metric")


def register_metric(
    name: str,
    *,
    label: str,
    direction: Direction,
    definition: str,
    views: Sequence[View] = (),
    source: Source = "scorecard",
    per_relation: bool = False,
    compute: ScoreFn | None = None,
    fact_groups: bool = True,
) -> MetricInfo:
    """Add a metric to the table (a duplicate name is an error)."""
    unknown = set(views) - set(VIEWS)
    if unknown:
        raise ValueError(f"unknown view(s) {sorted(unknown)} of metric {name!r}; views are {VIEWS}")
    info = MetricInfo(
        label,
        direction,
        " ".join(definition.split()),
        frozenset(views),
        source,
        compute,
        per_relation,
        fact_groups,
    )
    return METRICS.register(name)(info)


def names(view: View) -> tuple[str, ...]:
    """The metrics of one view, in registration order."""
    return tuple(name for name, info in METRICS.items() if view in info.views)


def info(name: str) -> MetricInfo:
    """The entry of ``name`` (an unknown name: one line listing the known ones)."""
    return METRICS[name.split("@")[0]]


def label(key: str) -> str:
    """Display name of a metric key (a per-relation ``name@P36`` keeps its suffix); keys outside the
    table (independent metrics) are shown as they are."""
    base, _, rel = key.partition("@")
    if base not in METRICS:
        return key
    return METRICS[base].label + (f" @{rel}" if rel else "")


def scorecard_metrics() -> list[tuple[str, MetricInfo]]:
    """(name, entry) of every metric the scorecard computes, in registration order."""
    return [(n, i) for n, i in METRICS.items() if i.compute is not None]


# Numbers computed outside the scorecard that reports and the results store show beside it.
register_metric(
    "fact_accuracy",
    label="fact top-1",
    direction="none",
    definition="""Share of fact prompts whose object is the model's top-1 prediction, on held-out templates
    (training lab), for the held-out facts (and, + .trained_facts, for the objectives' facts).""",
    views=("trial", "summary", "agreement", "column", "checkpoint"),
    source="train",
)
register_metric(
    "val_loss",
    label="val loss",
    direction="none",
    definition="Mean next-token cross-entropy (nats) on the training corpus's validation windows.",
    views=("summary", "agreement", "column"),
    source="train",
    fact_groups=False,
)
register_metric(
    "text_val_loss",
    label="text val loss",
    direction="none",
    definition="""Mean next-token cross-entropy (nats) on held-out lines of general text only (the cost of a
    variant measured where its fact objectives do not act).""",
    views=("summary", "column"),
    source="train",
    fact_groups=False,
)
register_metric(
    "cost_nats",
    label="cost (nats)",
    direction="none",
    definition="""Finetune: mean next-token NLL (nats/token) of the tuned model on held-out text minus the
    original model's on the same tokens.""",
    views=("summary", "column"),
    source="train",
    fact_groups=False,
)
register_metric(
    "kl",
    label="KL(orig || tuned)",
    direction="none",
    definition="""Finetune: KL divergence of the tuned model's next-token distribution from the original
    model's, KL(original || tuned), in nats per token of held-out text.""",
    views=("summary", "column"),
    source="train",
    fact_groups=False,
)
register_metric(
    "facts_lost",
    label="facts lost",
    direction="none",
    definition="""Finetune: share of the held-out facts (all known by the original model: top-1 on at least
    half of their usable prompts) that the tuned model no longer knows by the same criterion.""",
    views=("summary", "column"),
    source="train",
)
register_metric(
    "probe.relation",
    label="relation probe",
    direction="higher",
    definition="Held-out accuracy of a linear probe for the fact's relation (probe-checkpoints).",
    views=("checkpoint",),
    source="probe",
)
register_metric(
    "probe.object",
    label="object probe",
    direction="higher",
    definition="Held-out accuracy of a linear probe for the fact's object (probe-checkpoints).",
    views=("checkpoint",),
    source="probe",
)
