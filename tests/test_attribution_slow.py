"""The fast engine equals the reference on the embedded SmolLM2 (slow: runs the real model)."""

from __future__ import annotations

import pytest
import torch

from legibility.attribution import AttributionConfig, attribute
from legibility.attribution.fast import layer_path_gradients
from legibility.attribution.reference import _activations, _layer_gradients
from legibility.facts.types import Query

pytestmark = pytest.mark.slow
CFG = AttributionConfig(steps=5)
LAYERS = [0, 14, 29]  # the reference costs a whole-model pass per layer: check the ends and the middle


def reference_layers(lm, q: Query) -> torch.Tensor:
    acts = _activations(lm, q)
    alphas, weights = CFG.alphas(), CFG.weights()
    out = []
    for layer in LAYERS:
        grads = _layer_gradients(lm, q, layer, alphas[:, None] * acts[layer], CFG.batch_size)
        out.append(acts[layer] * (weights[:, None] * grads).sum(0))
    return torch.stack(out)


def fast_layers(lm, q: Query) -> torch.Tensor:
    acts, grads = layer_path_gradients(lm, q, LAYERS, CFG.alphas(), CFG.batch_size)
    return acts[LAYERS] * (grads * CFG.weights()[None, :, None]).sum(1)


def berlin(lm) -> tuple[list[int], list[int]]:
    return lm.encode("The capital city of Germany is"), lm.encode(" Berlin")


@pytest.fixture(scope="module")
def smollm64():
    """SmolLM2 in float64: the engine's only differences from the reference are then rounding."""
    from legibility import load_model

    return load_model("smollm2-135m", dtype=torch.float64)


def query(lm, token: int) -> Query:
    ids, target = berlin(lm)
    if token == 1:  # teacher-forced second token: the input holds the gold first token
        target = lm.encode(" Berlin Wall")
        ids = ids + target[:1]
    return Query(tuple(ids), len(ids) - 1, target[token])


@pytest.mark.parametrize("token", [0, 1], ids=["single-token", "second-token-of-multi"])
def test_fast_equals_reference_on_smollm_float64(smollm64, token):
    q = query(smollm64, token)
    ref, fast = reference_layers(smollm64, q), fast_layers(smollm64, q)
    scale = ref.abs().max()
    assert scale > 1e-6
    assert (fast - ref).abs().max() <= 1e-5 * scale


def test_fast_equals_reference_on_smollm_float32(smollm):
    """In float32 the 30-layer sums round differently (batch shapes differ): about 3e-5 relative measured."""
    q = query(smollm, 0)
    ref, fast = reference_layers(smollm, q), fast_layers(smollm, q)
    assert (fast - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_fast_all_layers_finds_top_neuron_where_reference_does(smollm):
    """Whole-model ig on SmolLM2: scores finite, and its top neuron's layer agrees with the reference there."""
    q = query(smollm, 0)
    scores = attribute(smollm, [q], "ig", CFG)[0]  # [30, 1536]
    assert torch.isfinite(scores).all() and scores.abs().max() > 0
    layer = int(scores.max(1).values.argmax())
    acts = _activations(smollm, q)
    grads = _layer_gradients(smollm, q, layer, CFG.alphas()[:, None] * acts[layer], CFG.batch_size)
    ref = acts[layer] * (CFG.weights()[:, None] * grads).sum(0)
    assert (scores[layer] - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_packed_engine_equals_per_query_engine_on_smollm_float64(smollm64):
    """Paraphrases of different lengths packed in one call, chunks mixing them, rows starting at the site:
    the same scores as the engine that ran one query at a time (float64: only rounding differs)."""
    from legibility.facts.render import render
    from legibility.facts.types import Fact

    fact = Fact(
        "Germany",
        "P36",
        "Berlin",
        (
            "The capital of Germany is [Y].",
            "Germany's capital city is [Y].",
            "The capital city of Germany is [Y].",
        ),
    )
    qs = [p.queries[0] for p in render(smollm64, fact).prompts]
    assert len({len(q.input_ids) for q in qs}) > 1
    packed = attribute(smollm64, qs, "ig", AttributionConfig(steps=3, max_rows=50))
    per_query = attribute(smollm64, qs, "ig-per-query", AttributionConfig(steps=3))
    for a, b in zip(packed, per_query, strict=True):
        assert (a - b).abs().max() <= 1e-9 * b.abs().max()
