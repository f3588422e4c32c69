"""Each penalty on a hand-computed case; schedules; masking; locality swaps preserve the function."""

from __future__ import annotations

import pytest
import torch
from train_helpers import tiny_cfg

from helpers import tiny_lm
from legibility import LegibilityError
from legibility.training import REGULARIZERS, Trainer
from legibility.training.regularizers import (
    RegularizerConfig,
    Setup,
    StepContext,
    parse_regularizers,
    recording,
)
from legibility.training.regularizers.locality import (
    Locality,
    LocalityConfig,
    distances,
    greedy_swaps,
    locality_cost,
    neuron_costs,
    permute_neurons,
)
from legibility.training.regularizers.penalties import (
    SparseConnections,
    SparseConnectionsConfig,
    activation_l1,
    activation_topk,
    correlation_l1,
    decov,
    dropout_curvature,
    magnitude_mask,
    weight_l1,
)

T = torch.tensor


def test_registry_has_every_regularizer_of_the_issue():
    assert set(REGULARIZERS.names()) == {
        "activation_sparsity",
        "decorrelation",
        "explicit_dropout",
        "ffn_dropout",
        "locality",
        "sparse_connections",
        "suppressability",
        "specific_suppressability",
    }


def test_correlation_l1_hand_cases():
    perfectly = T([[1.0, 2.0], [2.0, 4.0], [3.0, 6.0]])
    assert float(correlation_l1(perfectly)) == pytest.approx(1.0, rel=1e-5)
    uncorrelated = T([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])
    assert float(correlation_l1(uncorrelated)) == pytest.approx(0.0, abs=1e-7)
    x0 = T([1.0, -1.0, 1.0, -1.0])
    x1 = T([1.0, -1.0, -1.0, 1.0])
    # corr(0, 2) = -1, the others 0: |off| sums to 2 over 3 * 2 ordered pairs
    assert float(correlation_l1(torch.stack([x0, x1, -x0], 1))) == pytest.approx(1 / 3, rel=1e-5)


def test_decov_hand_case():
    # centered [[-1, 1], [1, -1]] -> C = [[1, -1], [-1, 1]]; 0.5 * (4 - 2) = 1
    assert float(decov(T([[1.0, 2.0], [3.0, 0.0]]))) == pytest.approx(1.0)


def test_activation_sparsity_hand_cases():
    assert float(activation_l1(T([[1.0, -2.0], [3.0, 0.0]]))) == pytest.approx(1.5)
    # rows: (3.5 - 2) / 3 and (4 - 3) / 3
    acts = T([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    assert float(activation_topk(acts, 1)) == pytest.approx((0.5 + 1 / 3) / 2)


def test_weight_l1_and_magnitude_mask_hand_cases():
    assert float(weight_l1([T([[1.0, -1.0]]), T([[2.0], [0.0], [-3.0]])])) == pytest.approx(7 / 5)
    mask = magnitude_mask(T([[0.1, -3.0], [2.0, 0.5]]), 0.5)
    assert mask.tolist() == [[False, True], [True, False]]


def test_dropout_curvature_is_the_cross_entropy_hessian_form():
    torch.manual_seed(1)
    logits, delta = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    expected = []
    for z, d in zip(logits, delta, strict=True):
        h = torch.autograd.functional.hessian(lambda z: torch.nn.functional.cross_entropy(z[None], T([2])), z)
        expected.append(0.5 * d @ h @ d)
    assert float(dropout_curvature(logits, delta)) == pytest.approx(
        float(torch.stack(expected).mean()), rel=1e-10
    )


def test_schedule_factor():
    cfg = RegularizerConfig(coef=2.0, start=0.2, ramp=0.4)
    assert [cfg.factor(s, 100) for s in (10, 40, 80)] == [0.0, pytest.approx(0.5), 1.0]
    assert RegularizerConfig().factor(0, 100) == 1.0


def test_locality_cost_hand_case():
    dist = distances(2, 3, "line")  # neurons at 0, 1; residual dims at 0, 0.5, 1
    assert dist.tolist() == [[0.0, 0.5, 1.0], [1.0, 0.5, 0.0]]
    w_in = [T([[1.0, 0.0, 0.0], [0.0, 0.0, 2.0]])]
    w_out = T([[0.0, 1.0], [0.0, 0.0], [0.0, 0.0]])  # neuron 1 -> dim 0, distance 1
    # |w| * (dist + 1): 1 * 1 + 2 * 1 + 1 * 2 = 5, averaged over 2 matrices of 6 entries
    assert float(locality_cost(w_in, w_out, dist, gap=1.0)) == pytest.approx(5 / 12)
    grid = distances(4, 4, "grid")
    assert float(grid[0, 3]) == pytest.approx(2**0.5)


def test_greedy_swaps_finds_the_better_placement():
    dist = distances(2, 2, "line")
    w_in = [T([[0.0, 5.0], [5.0, 0.0]])]  # neuron 0 talks to the far dimension and vice versa
    perm = greedy_swaps(neuron_costs(w_in, torch.zeros(2, 2), dist))
    assert perm.tolist() == [1, 0]


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_neuron_swaps_preserve_the_function_and_lower_the_cost(family):
    lm = tiny_lm(family)
    model = lm.model
    opt = torch.optim.AdamW(model.parameters())
    ids = torch.tensor([[5, 6, 7, 8, 9]])
    model(input_ids=ids).logits.sum().backward()
    opt.step()
    before = model(input_ids=ids).logits.detach()
    reg = Locality(LocalityConfig(swap_every=1), Setup(model, lm.sites))
    ctx = StepContext(model, lm.sites, 0, 10, ids)
    cost_before = float(reg.penalty(ctx).detach())
    mlp_w = next(
        p for n, p in model.named_parameters() if n.endswith(("mlp.c_fc.weight", "mlp.gate_proj.weight"))
    )
    moment_before = opt.state[mlp_w]["exp_avg"].clone()
    weight_before = mlp_w.detach().clone()
    reg.after_step(ctx, opt)
    after = model(input_ids=ids).logits.detach()
    assert torch.allclose(before, after, atol=1e-5)
    assert float(reg.penalty(ctx).detach()) < cost_before
    assert not torch.equal(mlp_w, weight_before)  # something was swapped ...
    axis = 1 if family == "gpt2" else 0  # ... and the optimizer state moved with the weights
    perm_match = torch.stack(
        [
            (
                weight_before.index_select(axis, torch.tensor([j]))
                - mlp_w.index_select(axis, torch.tensor([0]))
            )
            .abs()
            .sum()
            for j in range(mlp_w.shape[axis])
        ]
    ).argmin()
    assert torch.equal(
        opt.state[mlp_w]["exp_avg"].index_select(axis, torch.tensor([0])),
        moment_before.index_select(axis, perm_match.view(1)),
    )


def test_permute_neurons_round_trip():
    lm = tiny_lm("gpt2")
    ids = torch.tensor([[5, 6, 7]])
    before = lm.model(input_ids=ids).logits.detach()
    perm = torch.randperm(lm.sites.n_neurons)
    permute_neurons(lm.model, 0, perm)
    permute_neurons(lm.model, 0, perm.argsort())
    assert torch.allclose(lm.model(input_ids=ids).logits, before, atol=1e-6)


def test_sparse_connections_masks_to_the_final_density():
    lm = tiny_lm("llama")
    reg = SparseConnections(SparseConnectionsConfig(density=0.25), Setup(lm.model, lm.sites))
    ctx = StepContext(lm.model, lm.sites, 99, 100, torch.tensor([[1]]))
    reg.after_step(ctx, None)
    w = lm.model.model.layers[0].mlp.down_proj.weight
    assert (w != 0).float().mean().item() == pytest.approx(0.25, abs=1 / w.numel())


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_ffn_dropout_zeroes_the_neuron_site_in_training_only(family):
    """At the site the attribution reads (GPT-2's mlp.act output, Llama's act(gate) * up): in training each
    first-layer neuron is either dropped (exactly 0) or kept and scaled by 1 / (1 - p); in eval mode the
    activations are the clean ones, bit for bit."""
    lm = tiny_lm(family)
    for module in lm.model.modules():  # the tiny GPT-2 keeps HF's default builtin dropout of 0.1
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    spec = REGULARIZERS["ffn_dropout"]
    p = 0.4
    reg = spec.build(spec.config(p=p), Setup(lm.model, lm.sites))
    ids = torch.randint(3, lm.model.config.vocab_size, (4, 9))
    ctx = StepContext(lm.model, lm.sites, 0, 10, ids)
    lm.model.eval()
    with lm.sites.record() as store:
        lm.model(input_ids=ids)
    clean = store[0].clone()  # [batch, pos, neurons]
    assert (clean == 0).sum() == 0  # so every zero below is a drop
    lm.model.train()
    with reg.forward(ctx), lm.sites.record() as store:
        lm.model(input_ids=ids)
    dropped = store[0] == 0
    kept = ~dropped
    assert torch.allclose(store[0][kept], clean[kept] / (1 - p), rtol=1e-5, atol=1e-6)
    n = dropped.numel()
    assert abs(dropped.float().mean().item() - p) < 4 * (p * (1 - p) / n) ** 0.5  # binomial, 4 sigma
    assert all((store[layer] == 0).any() for layer in range(lm.sites.n_layers))  # every layer
    lm.model.eval()
    with reg.forward(ctx), lm.sites.record() as store:
        lm.model(input_ids=ids)
    assert torch.equal(store[0], clean)


def test_builtin_dropout_never_drops_an_ffn_neuron():
    """model.builtin_dropout (Hugging Face's) acts on embeddings, residual and attention, not on the
    neurons: in training it changes the site's values but zeroes none of them (what ffn_dropout is for)."""
    from legibility.models.sites import Sites
    from legibility.training.config import ModelConfig
    from legibility.training.model import build_model

    model = build_model(ModelConfig(d_model=32, d_ffn=64, builtin_dropout=0.5), vocab_size=50)
    sites = Sites.detect(model)
    ids = torch.randint(3, 50, (4, 9))
    model.eval()
    with sites.record() as store:
        model(input_ids=ids)
    clean = store[0].clone()
    model.train()
    with sites.record() as store:
        model(input_ids=ids)
    assert not torch.allclose(store[0], clean)  # the dropout did act upstream of the site ...
    assert (store[0] == 0).sum() == 0  # ... yet no neuron was dropped


def test_parse_regularizers_errors_name_the_key():
    with pytest.raises(
        LegibilityError, match=r"regularizers\[0\].name: unknown regularizer 'nope'; available: .*locality"
    ):
        parse_regularizers([{"name": "nope"}])
    with pytest.raises(
        LegibilityError, match=r"regularizers\[1\] \(decorrelation\): unknown key\(s\) bogus; allowed: coef"
    ):
        parse_regularizers([{"name": "ffn_dropout"}, {"name": "decorrelation", "bogus": 1}])
    with pytest.raises(LegibilityError, match=r"form: 'l3' is not allowed; choose one of 'l1', 'decov'"):
        parse_regularizers([{"name": "decorrelation", "form": "l3"}])


@pytest.mark.parametrize(
    "entry",
    [
        {"name": "decorrelation", "coef": 0.1},
        {"name": "decorrelation", "form": "decov", "coef": 0.1},
        {"name": "activation_sparsity", "form": "topk", "k": 4, "coef": 0.1},
        {"name": "sparse_connections", "density": 0.5, "coef": 0.1},
        {"name": "locality", "coef": 0.1, "swap_every": 2},
        {"name": "explicit_dropout", "coef": 0.1, "grad_noise": 1e-3},
        {"name": "suppressability", "coef": 0.1, "facts_per_step": 4},
    ],
)
@pytest.mark.slow
def test_each_regularizer_trains_and_logs_its_penalty(tmp_path, entry):
    trainer = Trainer(tiny_cfg(steps=3, regularizers=[entry]), tmp_path, progress=False)
    metrics = trainer.train_step(0)
    assert torch.isfinite(torch.tensor(metrics["loss"]))
    key = f"reg.{entry['name']}"
    assert key in metrics
    assert metrics["loss"] == pytest.approx(metrics["lm_loss"] + 0.1 * metrics[key], rel=1e-5)


def test_explicit_dropout_penalty_estimates_the_wei_kakade_ma_regularizer():
    """E_r[penalty] = 0.5 * p/(1-p) * sum_k J_k^T H J_k (Gauss-Newton form), J = d logits / d(relative noise)."""
    lm = tiny_lm("gpt2")
    model = lm.model.double()
    ids = torch.tensor([[5, 9, 14]])
    n_layers, t, n = lm.sites.n_layers, ids.shape[1], lm.sites.n_neurons

    def logits_of(u: torch.Tensor) -> torch.Tensor:  # u [layers, pos, neurons] -> logits [pos, vocab]
        fns = {layer: (lambda a, layer=layer: a + a * u[layer][None]) for layer in range(n_layers)}
        with lm.sites.patch(fns):
            return model(input_ids=ids).logits[0]

    zero = torch.zeros(n_layers, t, n, dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(logits_of, zero).reshape(t, -1, n_layers * t * n)
    clean = logits_of(zero).detach()
    p = 0.1
    exact = []
    for pos in range(t):
        s = clean[pos].softmax(-1)
        h = torch.diag(s) - torch.outer(s, s)
        exact.append(0.5 * p / (1 - p) * torch.trace(jac[pos].T @ h @ jac[pos]))
    expected = float(torch.stack(exact).mean())

    spec = REGULARIZERS["explicit_dropout"]
    reg = spec.build(spec.config(p=p, eps=1e-4), Setup(model, lm.sites))
    many = ids.repeat(4000, 1)  # every row draws its own noise: the batch mean is a Monte-Carlo average
    ctx = StepContext(model, lm.sites, 0, 1, many)
    with torch.no_grad():
        store: dict = {}
        with recording(lm.sites, store):
            ctx.logits = model(input_ids=many).logits
        ctx.activations = store
        estimate = float(reg.penalty(ctx))
    assert expected > 0
    assert estimate == pytest.approx(expected, rel=0.05)


@pytest.mark.parametrize("name", ["suppressability", "specific_suppressability"])
def test_fact_objectives_without_facts_say_what_they_need(name):
    lm = tiny_lm("gpt2")
    spec = REGULARIZERS[name]
    with pytest.raises(LegibilityError, match=f"the {name} regularizer needs facts in the corpus"):
        spec.build(spec.config(), Setup(lm.model, lm.sites, lm.tokenizer))
