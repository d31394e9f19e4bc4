"""The built-in samplers: the six rules (docs/explanation.md) plus familiar presets of them.

Presets are the same rule functions with fixed options, never copies of update code; what each needs
from a corruption follows from the rule's declaration and the preset's options.
"""

from __future__ import annotations

import udm
from udm import samplers as S

_RULE_DOCS = {
    "renoise": "F_s(x0_hat, fresh eps) (Cold Diffusion naive)",
    "invert": "F_s(x0_hat, eps_hat) (DDIM eta=0; absorbing ancestral)",
    "refresh": "F_s(x0_hat, refresh(eps_hat, a)); pass eta or amount",
    "residual": "x_t + F_s(x0_hat, eps_hat) - F_t(x0_hat, eps_hat) (Cold Diffusion Alg. 2)",
    "ode": "integrate d/dt F_t(x0_hat, eps_hat); solver euler|heun|rk4",
    "posterior": "the corruption's closed-form p(x_s | x_t, x0_hat)",
}

_PRESETS = (
    # name, rule, options, description
    ("ddim", "invert", {}, "DDIM (Song et al. 2021), eta = 0"),
    ("ddpm", "refresh", {"eta": 1.0}, "DDPM ancestral sampling (refresh with eta = 1)"),
    ("euler", "ode", {"solver": "euler"}, "probability-flow ODE, Euler"),
    ("heun", "ode", {"solver": "heun"}, "probability-flow ODE, Heun (2nd order)"),
    ("rk4", "ode", {"solver": "rk4"}, "probability-flow ODE, classic Runge-Kutta (4th order)"),
    ("cold", "residual", {}, "Cold Diffusion Algorithm 2 when F is deterministic; equals invert when F inverts in eps"),
    ("naive", "renoise", {}, "Cold Diffusion naive sampling (Algorithm 1)"),
)


def specs() -> list[udm.SamplerSpec]:
    out = [udm.SamplerSpec(name, fn, (), {}, _RULE_DOCS[name], exact_marginals=name != "ode")
           for name, fn in S.RULES.items()]
    for name, rule, options, doc in _PRESETS:
        out.append(udm.SamplerSpec(name, S.RULES[rule], (), options, doc, exact_marginals=rule != "ode"))
    return out


@udm.hookimpl
def udm_register_samplers(register):
    for spec in specs():
        register(spec)
