"""Knowledge editing and erasing through FFN value vectors, and FFN neurons read as key-value memories."""

from legibility.editing.edit import EditConfig, edit_neurons, fact_edit, shared_neurons, value_edit
from legibility.editing.erase import EraseConfig, relation_erase, top_shared
from legibility.editing.evaluate import EditCase, EditEvaluator, EvalConfig, evaluate_erase
from legibility.editing.memory import (
    CardConfig,
    NeuronCard,
    card_text,
    fact_neuron_cards,
    neuron_card,
    value_logits,
    write_run_cards,
)
from legibility.editing.values import (
    ValueEdit,
    embedding_matrix,
    random_like,
    token_embedding,
    value_matrix,
    value_vector,
)

__all__ = [
    "CardConfig",
    "EditCase",
    "EditConfig",
    "EditEvaluator",
    "EraseConfig",
    "EvalConfig",
    "NeuronCard",
    "ValueEdit",
    "card_text",
    "edit_neurons",
    "embedding_matrix",
    "evaluate_erase",
    "fact_edit",
    "fact_neuron_cards",
    "neuron_card",
    "random_like",
    "relation_erase",
    "shared_neurons",
    "token_embedding",
    "top_shared",
    "value_edit",
    "value_logits",
    "value_matrix",
    "value_vector",
    "write_run_cards",
]
