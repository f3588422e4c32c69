"""Editing and neuron cards on the embedded SmolLM2-135M (slow: loads the real model).

The neurons below are the knowledge neurons that `legibility edit-eval` located (integrated gradients,
adaptive p) for PARAREL's "Kingdom of Bohemia | P36 | Prague" with the "capital" prompts (docs/editing.md);
they are pinned here so that the test measures the edit, not the attribution.
"""

from __future__ import annotations

import pytest
import torch

from legibility import Fact, load_model, predict, render
from legibility.editing import fact_edit, neuron_card, random_like
from legibility.editing.evaluate import retarget
from legibility.facts.counterfacts import object_token
from legibility.metrics.perplexity import perplexity
from legibility.metrics.text import SAMPLE_TEXT

pytestmark = pytest.mark.slow

BOHEMIA = Fact(
    "Kingdom of Bohemia",
    "P36",
    "Prague",
    (
        "The capital of Kingdom of Bohemia is [Y] .",
        "Kingdom of Bohemia's capital, [Y].",
        "Kingdom of Bohemia's capital is [Y].",
        "Kingdom of Bohemia, which has the capital [Y].",
    ),
)
NEURONS = [(27, 74), (27, 1453)]


@pytest.fixture(scope="module")
def lm():
    return load_model("smollm2-135m")


def test_value_edit_flips_a_fact_and_random_neurons_do_not(lm):
    rendered = render(lm, BOHEMIA)
    assert len(rendered.prompts) == 4
    old_id, new_id = object_token(lm, BOHEMIA, "Prague"), object_token(lm, BOHEMIA, "Raleigh")
    assert lm.tokenizer.decode([new_id]) == " Raleigh"  # the leading-space token the model would emit
    old_q, new_q = retarget(rendered.prompts, old_id), retarget(rendered.prompts, new_id)
    before = predict(lm, old_q)
    assert int((before.rank == 0).sum()) >= 2  # the model knows the fact
    state = {k: v.clone() for k, v in lm.model.state_dict().items()}
    with fact_edit(lm, BOHEMIA, "Raleigh", NEURONS).applied(lm):
        after_new, after_old = predict(lm, new_q), predict(lm, old_q)
    control = random_like(NEURONS, lm.sites.n_neurons, torch.Generator().manual_seed(0))
    with fact_edit(lm, BOHEMIA, "Raleigh", control).applied(lm):
        random_new = predict(lm, new_q)
    assert all(torch.equal(v, state[k]) for k, v in lm.model.state_dict().items())  # undone bit-exactly
    assert int((after_new.rank == 0).sum()) >= 3  # measured: Raleigh is the argmax on all 4 prompts
    assert int((after_old.rank == 0).sum()) == 0
    assert int((random_new.rank == 0).sum()) == 0


def test_neuron_card_and_perplexity_on_smollm2(lm):
    rendered = render(lm, BOHEMIA)
    text = "\n".join(SAMPLE_TEXT.splitlines()[:6])  # a few lines: the full sample costs ~20 s on a busy CPU
    card = neuron_card(lm, 27, 1453, rendered.prompts, text)
    weight = lm.sites.modules[27].weight.detach()  # down_proj: [d_model, n_neurons]
    logits = lm.model.get_output_embeddings().weight.detach() @ weight[:, 1453]
    assert [t.id for t in card.promoted] == torch.topk(logits, 10).indices.tolist()
    assert card.contexts[0].source == "facts"  # it fires hardest on the capital prompts
    assert 3.0 < perplexity(lm, text) < 60.0


def test_edit_eval_resumed_and_rerun_equal_an_uninterrupted_run(smollm, pararel_dir, tmp_path):
    """edit-eval's files after a no-op rerun, and after a run cut short mid-edits and resumed, are the
    uninterrupted run's, byte for byte."""
    import shutil

    from legibility.editing.evaluate import EvalConfig
    from legibility.editing.experiment import ExperimentConfig, run_experiment

    cfg = ExperimentConfig(  # a fast method and short perplexity lines: resuming is what is tested
        relation="P36",
        n_facts=2,
        held_out=1,
        others=("P103",),
        n_others=2,
        method="relp",
        eval=EvalConfig(max_tokens=16),
        data_dir=str(pararel_dir),
    )
    whole = tmp_path / "whole"
    run_experiment(smollm, whole, cfg, progress=False)
    files = {name: (whole / name).read_bytes() for name in ("edits.jsonl", "erase.json", "summary.json")}
    assert len(files["edits.jsonl"].splitlines()) >= 2

    cut = tmp_path / "cut"  # as if killed after the first edit record
    shutil.copytree(whole, cut)
    (cut / "edits.jsonl").write_bytes(files["edits.jsonl"].splitlines(keepends=True)[0])
    (cut / "erase.json").unlink()
    (cut / "summary.json").unlink()
    run_experiment(smollm, cut, cfg, progress=False)
    run_experiment(smollm, whole, cfg, progress=False)  # a no-op rerun
    for name, content in files.items():
        assert (cut / name).read_bytes() == content, name
        assert (whole / name).read_bytes() == content, name
