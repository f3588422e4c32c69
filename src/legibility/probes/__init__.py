"""Linear probes per layer, truth probes (logistic, mass-mean, CCS), truth-direction steering, the lying
condition and probes over training checkpoints. See docs/probes.md."""

from legibility.probes.concept import ProbeSettings, probe_layers
from legibility.probes.data import Example, Statement, load_jsonl_examples, pararel_examples, truth_statements
from legibility.probes.linear import (
    CCSProbe,
    LinearProbe,
    accuracy_estimate,
    control_labels,
    fit_ccs,
    fit_logistic,
    fit_mass_mean,
    group_split,
)
from legibility.probes.run import ConceptConfig, TruthConfig, run_concept, run_truth
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
    "control_labels",
    "fit_ccs",
    "fit_logistic",
    "fit_mass_mean",
    "group_split",
    "load_jsonl_examples",
    "pararel_examples",
    "probe_layers",
    "run_concept",
    "run_truth",
    "truth_statements",
]
