"""Relevance patching (RelP; Jafari, Eberle, Khakzar and Nanda 2025, arXiv 2508.21258) for FFN neurons.

RelP is attribution patching with the local gradients replaced by the propagation coefficients of
layer-wise relevance propagation (LRP). Every rule below changes only the backward pass (forward values are
bit for bit the model's), so the score of every neuron of every layer comes from one forward and one backward
of the prompt, as for ``grad-x-act``:

    score[l, i] = a_i * (modified) d p(target) / d a_i

* **LN rule** (Ali et al. 2022): LayerNorm / RMSNorm with its scale 1 / sqrt(var + eps) held constant
  (LayerNorm keeps its mean subtraction, which is linear). Recomputed from the norm's input, its ``eps`` and
  its weight (``w`` or Gemma's ``1 + w``, whichever reproduces the module's output; neither: a one-line error).
* **Identity rule** (Jafari et al. 2024): an elementwise activation y = f(x) passes relevance unchanged: its
  local gradient is y / x instead of f'(x) (1/2, GELU's and SiLU's limit, where x is exactly 0). Applied to the
  activation modules (``transformers.activations``, ``nn.GELU``, ...) and to functional GELU / SiLU / ReLU
  calls (RoBERTa's head).
* **Half rule** (Arras et al. 2019; RelP): the gated product act(gate) * up of gated MLPs (Llama, Mistral,
  Qwen, Gemma) passes half of its gradient on (each factor gets half the relevance). The product is the site,
  so the rule is applied where the site's gradient is read, below the point where it is read.
* **AH rule** (Ali et al. 2022): attention weights held constant: softmax outputs are detached, and for
  ``scaled_dot_product_attention`` the queries and keys are (the weights depend on nothing else).
* Linear layers, residual additions, embeddings: the plain gradient (LRP-0).

``relp`` scores against the zero baseline, a * g; ``relp-mean`` and ``relp-corrupt`` patch against other
subjects' prompts of the relation as ``atp-mean`` / ``atp-corrupt`` do, (a - b) * g with RelP's g (the
paper's clean / corrupted patching). The objective is p(target) at the answer position, as for ``ig`` and ``grad-x-act`` (its softmax is the
objective, not a layer: no rule applies to it). The rules hold for every family of the architecture table;
:func:`relevance_rules` checks at each forward that it modified an attention and an activation in (at least)
every block after the first, and refuses a model where it did not (e.g. flash attention).
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from legibility.attribution.base import METHODS, MethodInfo
from legibility.attribution.patching import SiteRule, patching_method, prepare_baselines
from legibility.errors import LegibilityError
from legibility.models.loading import LoadedModel
from legibility.models.sites import architecture

F = nn.functional
_ELEMENTWISE = (nn.GELU, nn.SiLU, nn.ReLU, nn.Tanh, nn.Mish, nn.LeakyReLU, nn.ELU)
_FUNCTIONAL_ACTS = {F.gelu, F.silu, F.relu}
_SOFTMAX = {F.softmax, torch.softmax, Tensor.softmax}


def identity_rule(x: Tensor, y: Tensor) -> Tensor:
    """y, with local gradient y / x (1/2 where x == 0)."""
    ratio = torch.where(x == 0, torch.full_like(y, 0.5), y / torch.where(x == 0, torch.ones_like(x), x))
    return y.detach() + ratio.detach() * (x - x.detach())


def half_rule(a: Tensor) -> Tensor:
    """a, with half its gradient passed on."""
    return a / 2 + (a / 2).detach()


def ln_rule(module: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """y = norm(x), with the gradient of the norm whose scale 1 / sqrt(var + eps) is held constant."""
    xf = x.float()
    layer_norm = isinstance(module, nn.LayerNorm) or type(module).__name__.endswith("LayerNorm")
    centered = xf - xf.mean(-1, keepdim=True) if layer_norm else xf
    eps = getattr(module, "eps", None)
    eps = float(getattr(module, "variance_epsilon", 1e-6) if eps is None else eps)
    normed = centered * torch.rsqrt(centered.pow(2).mean(-1, keepdim=True) + eps).detach()
    weight = getattr(module, "weight", None)
    bias = getattr(module, "bias", None)
    if weight is None:
        candidates = [normed]
    else:
        w = weight.float()
        candidates = [normed * w, normed * (1 + w)]
    if isinstance(bias, Tensor):
        candidates = [c + bias.float() for c in candidates]
    yf = y.detach().float()
    tol = 1e-3 * float(yf.abs().max()) + 1e-6
    for c in candidates:
        if float((c.detach() - yf).abs().max()) <= tol:
            c = c.to(y.dtype)
            return y.detach() + (c - c.detach())
    raise LegibilityError(
        f"relp: cannot reproduce the normalization {type(module).__name__} (neither x / rms(x) * w nor "
        "* (1 + w), nor LayerNorm); add its formula to legibility.attribution.relevance.ln_rule"
    )


def _is_norm(module: nn.Module) -> bool:
    return isinstance(module, nn.LayerNorm) or type(module).__name__.endswith(("RMSNorm", "LayerNorm"))


def _is_activation(module: nn.Module) -> bool:
    return isinstance(module, _ELEMENTWISE) or type(module).__module__ == "transformers.activations"


class _AttentionAndActivationRules(TorchFunctionMode):
    """Detaches attention weights (softmax outputs; SDPA queries and keys) and applies the identity rule to
    functional activations, for the duration of the forward pass."""

    def __init__(self, counts: Counter[str]):
        super().__init__()
        self.counts = counts

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.scaled_dot_product_attention:
            self.counts["attention"] += 1
            args = list(args)
            for i, name in enumerate(("query", "key")):
                if name in kwargs:
                    kwargs[name] = kwargs[name].detach()
                elif len(args) > i:
                    args[i] = args[i].detach()
            return func(*args, **kwargs)
        out = func(*args, **kwargs)
        if func in _SOFTMAX:
            self.counts["attention"] += 1
            return out.detach()
        if func in _FUNCTIONAL_ACTS:
            self.counts["activation"] += 1
            return identity_rule(args[0] if args else kwargs["input"], out)
        return out


@contextlib.contextmanager
def relevance_rules(lm: LoadedModel) -> Iterator[SiteRule]:
    """RelP's rules on every norm, activation and attention of the model for the duration of the forward
    pass; yields the rule for the site activation (the half rule where the site is a gated product)."""
    arch = architecture(getattr(lm.model.config, "model_type", None))
    gated = arch is not None and arch.gated
    if gated and lm.sites.spec.module != arch.site.module:  # type: ignore[union-attr]
        raise LegibilityError(
            "relp applies the half rule at the gated product act(gate) * up: use the standard FFN sites "
            "(site='ffn') for this family"
        )
    counts: Counter[str] = Counter()
    handles = []

    def norm_hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        counts["norm"] += 1
        return ln_rule(module, args[0], out)

    def act_hook(module: nn.Module, args: tuple, out: Tensor) -> Tensor:
        counts["activation"] += 1
        return identity_rule(args[0], out)

    try:
        for module in lm.model.modules():
            if _is_norm(module):
                handles.append(module.register_forward_hook(norm_hook))
            elif _is_activation(module):
                handles.append(module.register_forward_hook(act_hook))
        with _AttentionAndActivationRules(counts):
            yield half_rule if gated else (lambda a: a)
    finally:
        for h in handles:
            h.remove()
    n = max(1, lm.sites.n_layers - 1)  # block 0's attention does not run when rows start at its site
    if counts["attention"] < n or counts["activation"] < n:
        raise LegibilityError(
            f"relp modified {counts['attention']} attention and {counts['activation']} activation calls in "
            f"a model of {lm.sites.n_layers} blocks; it needs eager or sdpa attention and activation modules or functional "
            "GELU/SiLU/ReLU (load the model with attn_implementation='sdpa')"
        )


METHODS.register("relp")(
    MethodInfo(
        patching_method(0, relevance_rules, "relp"),
        exact=False,
        description="relevance patching: activation x gradient with LRP rules (norm scale, attention weights "
        "constant; identity rule for activations; half rule for gated products), one forward + backward",
    )
)
METHODS.register("relp-mean")(
    MethodInfo(
        patching_method(None, relevance_rules, "relp-mean"),
        exact=False,
        description="relevance patching against the mean activation of the same prompt with config.baselines "
        "other subjects of the relation: (activation - baseline) x RelP's gradient",
        prepare=prepare_baselines(None),
    )
)
METHODS.register("relp-corrupt")(
    MethodInfo(
        patching_method(1, relevance_rules, "relp-corrupt"),
        exact=False,
        description="relevance patching against the same prompt with another subject of the relation: "
        "(activation - corrupted activation) x RelP's gradient (the paper's clean/corrupt patching)",
        prepare=prepare_baselines(1),
    )
)
