"""The reverse-SDE samplers (docs/math.md, "The SDE view and correctors") and their presets.

The rules live in :mod:`udm.samplers` (``sde``, ``reverse_diffusion``, ``edm``); the presets fix their options,
never copy their update code. All three are discretisations (exact only as the steps shrink), hence
``exact_marginals=False``.
"""

from __future__ import annotations

import udm
from udm import samplers as S

_SPECS = (
    # name, rule, options, description[, extra capabilities: churn raises sigma = s/a, one noise level per time]
    ("sde", S.sde, {}, "reverse-SDE family, Euler-Maruyama; eta >= 0 (0: probability-flow ODE, 1: reverse SDE)"),
    ("euler_maruyama", S.sde, {"eta": 1.0}, "score_sde's reverse SDE, Euler-Maruyama (sde with eta = 1)"),
    ("reverse_diffusion", S.reverse_diffusion, {}, "score_sde's reverse-diffusion predictor (the exact forward step "
                                                   "reversed)"),
    ("edm", S.edm, {}, "EDM (Karras et al. 2022) Heun in sigma = s/a; churn > 0 for the stochastic Algorithm 2"),
    ("edm_stochastic", S.edm, {"churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.003},
     "EDM Algorithm 2 with the paper's ImageNet-64 settings (churn 40, s_tmin 0.05, s_tmax 50, s_noise 1.003)",
     ("schedule",)),
)


def specs() -> list[udm.SamplerSpec]:
    return [udm.SamplerSpec(name, rule, extra[0] if extra else (), options, doc, exact_marginals=False)
            for name, rule, options, doc, *extra in _SPECS]


@udm.hookimpl
def udm_register_samplers(register):
    for spec in specs():
        register(spec)
