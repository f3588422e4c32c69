from legibility.metrics.effects import EffectConfig, EffectRunner, prompt_probs
from legibility.metrics.scorecard import fact_score, layer_histogram, score_metrics, scorecard
from legibility.metrics.stats import Estimate, bootstrap

__all__ = [
    "EffectConfig",
    "EffectRunner",
    "Estimate",
    "bootstrap",
    "fact_score",
    "layer_histogram",
    "prompt_probs",
    "score_metrics",
    "scorecard",
]
