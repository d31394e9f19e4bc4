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
    "multistep": "invert with x0_hat extrapolated in log-SNR; method dpm++|unipc|deis, order, eta, unic",
    "adaptive": "error-controlled probability-flow ODE (embedded Runge-Kutta bs3|dopri5; rtol, atol)",
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
    ("dpm++2m", "multistep", {"method": "dpm++", "order": 2}, "DPM-Solver++(2M) (Lu et al. 2022)"),
    ("dpm++3m", "multistep", {"method": "dpm++", "order": 3}, "DPM-Solver++(3M)"),
    ("dpm++2m_sde", "multistep", {"method": "dpm++", "order": 2, "eta": 1.0}, "DPM-Solver++(2M) SDE"),
    ("dpm++3m_sde", "multistep", {"method": "dpm++", "order": 3, "eta": 1.0}, "DPM-Solver++(3M) SDE"),
    ("unipc", "multistep", {"method": "unipc", "order": 2, "unic": True, "variant": "bh2"},
     "UniPC-2 with the bh2 corrector (Zhao et al. 2023)"),
    ("deis", "multistep", {"method": "deis", "order": 3}, "DEIS tAB3 in log rho (Zhang & Chen 2023)"),
)
#: rules whose steps are exact for any step size given x0_hat = x_0 only as steps shrink (discretised ODEs)
_DISCRETISED = ("ode", "adaptive")


def specs() -> list[udm.SamplerSpec]:
    out = [udm.SamplerSpec(name, fn, (), {}, _RULE_DOCS[name], exact_marginals=name not in _DISCRETISED)
           for name, fn in S.RULES.items()]
    for name, rule, options, doc in _PRESETS:
        out.append(udm.SamplerSpec(name, S.RULES[rule], (), options, doc, exact_marginals=rule not in _DISCRETISED))
    return out


@udm.hookimpl
def udm_register_samplers(register):
    for spec in specs():
        register(spec)
