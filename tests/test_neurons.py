import pytest
import torch

from legibility import LegibilityError
from legibility.neurons import NeuronConfig, coarse_neurons, knowledge_neurons, refine


def test_coarse_keeps_scores_above_t_times_max():
    s = torch.zeros(2, 4)
    s[0, 1], s[1, 3], s[1, 0], s[0, 2] = 1.0, 0.21, 0.2, -5.0
    assert coarse_neurons(s, 0.2) == [(0, 1), (1, 3)]
    assert coarse_neurons(torch.full((2, 3), -1.0)) == []
    with pytest.raises(LegibilityError):
        coarse_neurons(torch.zeros(3))


def test_refine_needs_strictly_more_than_p_of_prompts():
    sets = [[(0, 1), (1, 2)], [(0, 1)], [(0, 1), (1, 2)], [(2, 2)]]
    assert refine(sets, 0.5) == [(0, 1)]  # (1, 2) is in exactly half: not kept
    assert refine(sets, 0.49) == [(0, 1), (1, 2)]


def _scores(sets, shape=(3, 10)):
    out = torch.zeros(len(sets), *shape)
    for i, s in enumerate(sets):
        for layer, n in s:
            out[i, layer, n] = 1.0
    return out


def test_knowledge_neurons_and_min_prompts():
    scores = _scores([[(0, 1), (2, 3)], [(0, 1)], [(0, 1), (2, 3)]])
    kn = knowledge_neurons("f", "P1", scores, NeuronConfig(share=0.5))
    assert kn.neurons == [(0, 1), (2, 3)] and kn.by_layer() == {0: (1,), 2: (3,)}
    assert kn.n_prompts == 3 and [len(c) for c in kn.coarse] == [2, 1, 2]
    assert knowledge_neurons("f", "P1", scores[:1], NeuronConfig(min_prompts=2)).neurons == []


def test_adaptive_share_moves_p_into_target_range():
    common = [(0, i) for i in range(8)]  # 8 neurons in every prompt, 2 of them in all four
    sets = [common, common[:2] + [(1, 1)], common[:2] + [(1, 2)], common]
    scores = _scores(sets)
    fixed = knowledge_neurons("f", "P1", scores, NeuronConfig(share=0.4))
    assert len(fixed.neurons) == 8
    kn = knowledge_neurons("f", "P1", scores, NeuronConfig(share=0.4, adaptive=True, target=(2, 5)))
    assert kn.neurons == [(0, 0), (0, 1)] and kn.share >= 0.5
    few = _scores([[(0, 1)], [(0, 1)], [(0, 2)], [(0, 3)]])
    kn = knowledge_neurons("f", "P1", few, NeuronConfig(share=0.6, adaptive=True, target=(2, 5)))
    assert len(kn.neurons) >= 2 and kn.share < 0.6
