"""Training lab: small language models trained with interpretability regularizers.

Importing this package registers the SoLU activation in transformers (``hidden_act="solu"``).
"""

from legibility.training.config import (
    DataConfig,
    ModelConfig,
    PararelSource,
    RunConfig,
    TextSource,
    TokenizerConfig,
    TrainConfig,
    from_dict,
)
from legibility.training.corpus import Corpus, build_corpus, train_tokenizer
from legibility.training.model import SoLU, build_model, register_solu
from legibility.training.regularizers import REGULARIZERS, Regularizer, RegularizerConfig
from legibility.training.run_config import load_run_config, parse_run_config
from legibility.training.trainer import Trainer, train

__all__ = [
    "REGULARIZERS",
    "Corpus",
    "DataConfig",
    "ModelConfig",
    "PararelSource",
    "Regularizer",
    "RegularizerConfig",
    "RunConfig",
    "SoLU",
    "TextSource",
    "TokenizerConfig",
    "TrainConfig",
    "Trainer",
    "build_corpus",
    "build_model",
    "from_dict",
    "load_run_config",
    "parse_run_config",
    "register_solu",
    "train",
    "train_tokenizer",
]
