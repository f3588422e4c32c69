import pytest
import torch

from helpers import tiny_lm
from legibility import Intervention, LegibilityError, amplify, scale, set_to, suppress

IDS = torch.tensor([[5, 6, 7, 8, 9]])


def _logits(lm, ids=IDS):
    with torch.no_grad():
        return lm.model(input_ids=ids).logits


def _down_proj_weight(lm, layer):
    return lm.model.model.layers[layer].mlp.down_proj.weight


def test_suppress_everywhere_equals_zeroing_the_value_vectors():
    lm = tiny_lm("llama")
    with suppress(lm, {1: [3, 7]}, where="all"):
        hooked = _logits(lm)
    w = _down_proj_weight(lm, 1)
    saved = w.detach().clone()
    with torch.no_grad():
        w[:, [3, 7]] = 0
    try:
        reference = _logits(lm)
    finally:
        with torch.no_grad():
            w.copy_(saved)
    torch.testing.assert_close(hooked, reference)


def test_scale_everywhere_equals_scaling_the_value_vectors():
    lm = tiny_lm("llama")
    with scale(lm, {0: [1], 2: [4, 5]}, 3.0, where="all"):
        hooked = _logits(lm)
    saved = [_down_proj_weight(lm, i).detach().clone() for i in (0, 2)]
    with torch.no_grad():
        _down_proj_weight(lm, 0)[:, [1]] *= 3.0
        _down_proj_weight(lm, 2)[:, [4, 5]] *= 3.0
    try:
        reference = _logits(lm)
    finally:
        with torch.no_grad():
            for i, s in zip((0, 2), saved, strict=True):
                _down_proj_weight(lm, i).copy_(s)
    torch.testing.assert_close(hooked, reference)


def test_answer_position_only_changes_the_last_token_of_a_causal_lm():
    lm = tiny_lm("llama")
    base = _logits(lm)
    with amplify(lm, {0: list(range(20)), 1: list(range(20))}):
        amp = _logits(lm)
    torch.testing.assert_close(amp[:, :-1], base[:, :-1])
    assert not torch.allclose(amp[:, -1], base[:, -1])
    with scale(lm, {0: list(range(20)), 1: list(range(20))}, 2.0):
        torch.testing.assert_close(_logits(lm), amp)


def test_answer_position_is_the_mask_for_masked_lms():
    lm = tiny_lm("bert")
    mask = lm.tokenizer.mask_token_id
    ids = torch.tensor([[2, 5, mask, 7, 3]])
    rec = {}
    with set_to(lm, {1: [0, 1]}, 5.0), lm.sites.record([1]) as store:
        _logits(lm, ids)
        rec = store[1]
    assert torch.all(rec[0, 2, :2] == 5.0)
    assert not torch.any(rec[0, [0, 1, 3, 4], :2] == 5.0)


def test_right_padding_uses_each_rows_last_real_token():
    lm = tiny_lm("llama")
    ids = torch.tensor([[5, 6, 7, 0, 0], [5, 6, 7, 8, 9]])
    am = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    with set_to(lm, {0: [2]}, 9.0), lm.sites.record([0]) as store, torch.no_grad():
        lm.model(input_ids=ids, attention_mask=am)
    acts = store[0]
    assert acts[0, 2, 2] == 9.0 and acts[1, 4, 2] == 9.0
    assert acts[0, 4, 2] != 9.0 and acts[1, 2, 2] != 9.0


def test_interventions_are_scoped_and_validated():
    lm = tiny_lm("gpt2")
    base = _logits(lm)
    with suppress(lm, {0: [1]}):
        pass
    torch.testing.assert_close(_logits(lm), base)
    with pytest.raises(LegibilityError, match="out of range"), suppress(lm, {0: [999]}):
        pass
    with pytest.raises(LegibilityError, match="needs a value"):
        Intervention({0: (1,)}, "scale")
    with pytest.raises(LegibilityError, match="unknown intervention"):
        Intervention({0: (1,)}, "erase")  # type: ignore[arg-type]
    with pytest.raises(LegibilityError, match="layer 7 out of range"), suppress(lm, {7: [1]}):
        pass
