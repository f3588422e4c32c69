import pytest
import torch

from helpers import ALL_FAMILIES, MASKED, tiny_config, tiny_lm, tiny_tokenizer
from legibility import LegibilityError, Sites, SiteSpec, load_model
from legibility.facts.types import Query
from legibility.forward import answer_activations, make_batch, predict


def _manual_ffn_activation(lm, family, layer, ids):
    """The FFN intermediate activation computed from the block's own submodules, without our hooks."""
    model = lm.model
    captured = {}
    if family == "gpt2":
        mlp = model.transformer.h[layer].mlp
        h = mlp.c_fc.register_forward_hook(lambda m, i, o: captured.setdefault("x", mlp.act(o)))
    elif family == "gpt_neox":
        mlp = model.gpt_neox.layers[layer].mlp
        h = mlp.dense_h_to_4h.register_forward_hook(lambda m, i, o: captured.setdefault("x", mlp.act(o)))
    elif family in MASKED:
        enc = getattr(model, family).encoder.layer[layer]
        h = enc.intermediate.register_forward_hook(lambda m, i, o: captured.setdefault("x", o))
    else:
        mlp = model.model.layers[layer].mlp

        def hook(m, i):
            x = i[0]
            captured.setdefault("x", mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x))

        h = mlp.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            model(input_ids=ids)
    finally:
        h.remove()
    return captured["x"]


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_sites_read_the_post_nonlinearity_ffn_activation(family):
    lm = tiny_lm(family)
    assert lm.sites.n_layers == 3 and lm.sites.n_neurons == 48
    assert lm.kind == ("masked" if family in MASKED else "causal")
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    for layer in range(3):
        with torch.no_grad(), lm.sites.record([layer]) as store:
            lm.model(input_ids=ids)
        expected = _manual_ffn_activation(lm, family, layer, ids)
        torch.testing.assert_close(store[layer], expected)


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_patching_changes_output_and_hooks_are_removed(family):
    lm = tiny_lm(family)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = lm.model(input_ids=ids).logits
        with lm.sites.patch({1: lambda a: a * 0}):
            patched = lm.model(input_ids=ids).logits
        after = lm.model(input_ids=ids).logits
    assert not torch.allclose(before, patched)
    torch.testing.assert_close(before, after)
    assert all(not m._forward_pre_hooks and not m._forward_hooks for m in lm.sites.modules)


def test_every_family_of_the_architecture_table_is_tested():
    from legibility.models.sites import ARCHITECTURES, FAMILIES

    assert sorted(ALL_FAMILIES) == sorted(FAMILIES) == sorted(ARCHITECTURES)
    assert all(row.engine for row in FAMILIES.values())  # the exact engine runs every family
    assert {f for f, a in FAMILIES.items() if a.masked} == MASKED


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_final_norm_and_head_from_the_table_give_the_models_logits(family):
    """The table's tail (final norm / head / soft-capping) applied to the last block's output equals the
    model's own logits: the row is right for every family."""
    from legibility.attribution.engine import blocks_of, logits_from_hidden, tail_for

    lm = tiny_lm(family)
    ids = torch.tensor([[5, 6, 7, 8]])
    captured = {}
    last = blocks_of(lm)[-1]

    def grab(module, args, output):
        captured["h"] = output[0] if isinstance(output, tuple) else output

    h = last.register_forward_hook(grab)
    try:
        with torch.no_grad():
            logits = lm.model(input_ids=ids).logits[0, -1]
    finally:
        h.remove()
    tail = tail_for(lm)
    assert tail is not None
    with torch.no_grad():
        got = logits_from_hidden(lm, tail, captured["h"][:, -1])[0]
    torch.testing.assert_close(got, logits, rtol=1e-4, atol=1e-4)


def test_hooks_removed_even_when_the_forward_raises():
    lm = tiny_lm("llama")
    with pytest.raises(RuntimeError), lm.sites.patch({0: lambda a: a}):
        raise RuntimeError("boom")
    assert not lm.sites.modules[0]._forward_pre_hooks


def test_unknown_architecture_names_supported_ones_and_spec_route():
    import transformers as tr

    cfg = tr.OPTConfig(
        vocab_size=40,
        hidden_size=16,
        num_hidden_layers=2,
        ffn_dim=24,
        num_attention_heads=2,
        word_embed_proj_dim=16,
        max_position_embeddings=32,
    )
    model = tr.OPTForCausalLM(cfg)
    with pytest.raises(LegibilityError, match="not supported.*llama.*SiteSpec"):
        load_model(model, tiny_tokenizer())
    lm = load_model(model, tiny_tokenizer(), spec=SiteSpec("model.decoder.layers", "fc2", width="ffn_dim"))
    assert (lm.sites.n_layers, lm.sites.n_neurons) == (2, 24)


def test_model_without_lm_head_is_refused():
    import transformers as tr

    with pytest.raises(LegibilityError, match="no language-modelling head"):
        Sites.detect(tr.LlamaModel(tiny_config("llama")))


def test_wrong_spec_path_is_a_clear_error():
    with pytest.raises(LegibilityError, match="does not match"):
        Sites(tiny_lm("llama").model, SiteSpec("model.blocks", "mlp.down_proj"), "causal")


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(LegibilityError, match="does not exist"):
        load_model(str(tmp_path / "nope"))


def test_loaded_model_is_in_eval_mode():
    import transformers as tr

    model = tr.LlamaForCausalLM(tiny_config("llama"))
    model.train()
    assert not load_model(model, tiny_tokenizer()).model.training


def test_save_and_load_from_directory(tmp_path):
    lm = tiny_lm("gpt2")
    lm.model.save_pretrained(tmp_path)
    lm.tokenizer.save_pretrained(tmp_path)
    again = load_model(str(tmp_path))
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(lm.model(input_ids=ids).logits, again.model(input_ids=ids).logits)


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_predict_matches_plain_forward_with_padding(family):
    lm = tiny_lm(family)
    queries = [Query((5, 6, 7, 8), 3, 10), Query((5, 9), 1, 11), Query((12, 13, 14), 2, 15)]
    pred = predict(lm, queries, batch_size=2)
    for i, q in enumerate(queries):
        with torch.no_grad():
            logits = lm.model(input_ids=torch.tensor([q.input_ids])).logits[0, q.answer_pos]
        p = logits.softmax(-1)
        torch.testing.assert_close(pred.prob[i], p[q.target_id])
        assert int(pred.top[i]) == int(p.argmax())
        assert int(pred.rank[i]) == int((p > p[q.target_id]).sum())
    acts = answer_activations(lm, queries, batch_size=2)  # batched by length: rows come back in order
    assert acts.shape == (3, 3, 48)
    for i, q in enumerate(queries):
        torch.testing.assert_close(acts[i], answer_activations(lm, [q])[0])
    batch = make_batch(lm, queries)
    assert batch.input_ids.shape == (3, 4) and batch.attention_mask.sum().item() == 9
