from legibility.metrics.effects import EffectConfig, EffectRunner, prompt_probs
from legibility.metrics.scorecard import effect_metrics, layer_histogram, neuron_metrics, scorecard
from legibility.metrics.stats import Estimate, bootstrap

__all__ = [
    "EffectConfig",
    "EffectRunner",
    "Estimate",
    "bootstrap",
    "effect_metrics",
    "layer_histogram",
    "neuron_metrics",
    "prompt_probs",
    "scorecard",
]
