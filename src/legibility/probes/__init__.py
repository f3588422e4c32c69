"""Linear probes per layer, truth probes (logistic, mass-mean, CCS), truth-direction steering, the lying
condition and probes over training checkpoints. See docs/probes.md."""

from legibility.probes.concept import ProbeSettings, probe_layers
from legibility.probes.data import (
    Example,
    Statement,
    balanced_false_objects,
    load_jsonl_examples,
    pararel_examples,
    truth_statements,
)
from legibility.probes.linear import (
    CCSProbe,
    LinearProbe,
    control_labels,
    fit_ccs,
    fit_logistic,
    fit_mass_mean,
    group_split,
)
from legibility.probes.run import ConceptConfig, TruthConfig, run_concept, run_truth
from legibility.probes.selection import choose_layer, fixed_layer
from legibility.probes.stats import accuracy_estimate, mcnemar_exact, paired_difference
from legibility.probes.truth import TruthSettings

__all__ = [
    "CCSProbe",
    "ConceptConfig",
    "Example",
    "LinearProbe",
    "ProbeSettings",
    "Statement",
    "TruthConfig",
    "TruthSettings",
    "accuracy_estimate",
    "balanced_false_objects",
    "choose_layer",
    "control_labels",
    "fit_ccs",
    "fit_logistic",
    "fit_mass_mean",
    "fixed_layer",
    "group_split",
    "load_jsonl_examples",
    "mcnemar_exact",
    "paired_difference",
    "pararel_examples",
    "probe_layers",
    "run_concept",
    "run_truth",
    "truth_statements",
]
