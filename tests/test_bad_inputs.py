"""A table of bad inputs (issue 16, "what must hold"): the command line, YAML, data files, checkpoints, the
Python API and plugins. Each row asserts the exit code (for the Python API: the code the CLI gives that
exception, ``udm.cli.exit_code``) and the message pattern; none may end in a raw traceback.

Command-line rows run ``udm.cli.main`` in process (``udm check`` builds everything and runs two examples,
``udm run`` trains a tiny model), so the whole table takes a few seconds.
"""

from __future__ import annotations

import json
import re
import shutil
import types
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import udm
from udm.cli import exit_code, main
from udm.errors import UdmError, UdmWarning

from _tiny import MASK, TINY

BASE = TINY
#: <where>: <what> must be <rule>; got <value>. <fix>.  Some messages say it their own way:
#: "corruption 'x' must offer A; it lacks B", "give exactly one of eta or amount; got ...",
#: "variance 'sn' needs a run trained with ...; got ..."
TEMPLATE = re.compile(r": .*(must .*; (got|it lacks) |give exactly one of eta or amount; got |needs .*; got )")


@dataclass
class Case:
    id: str
    prepare: Callable[[Path], list[str]]  #: writes what the case needs under the folder, returns the argv
    code: int
    pattern: str


CASES: list[Case] = []


def cli(id: str, argv: list[str], code: int, pattern: str) -> None:
    def prepare(tmp: Path) -> list[str]:
        (tmp / "exp.yaml").write_text(BASE)
        return [a.replace("{exp}", str(tmp / "exp.yaml")) for a in argv]

    CASES.append(Case(id, prepare, code, pattern))


def sets(id: str, overrides: list[str], code: int, pattern: str, base: str = BASE, command: str = "check") -> None:
    def prepare(tmp: Path) -> list[str]:
        (tmp / "exp.yaml").write_text(base)
        return [command, str(tmp / "exp.yaml"), *(x for o in overrides for x in ("--set", o))]

    CASES.append(Case(id, prepare, code, pattern))


def yaml_file(id: str, text: str | bytes, code: int, pattern: str) -> None:
    def prepare(tmp: Path) -> list[str]:
        path = tmp / "bad.yaml"
        path.write_bytes(text.encode() if isinstance(text, str) else text)
        return ["check", str(path)]

    CASES.append(Case(id, prepare, code, pattern))


def data_file(id: str, name: str, write: Callable[[Path], Any], code: int, pattern: str, base: str = BASE,
              extra: tuple[str, ...] = ()) -> None:
    def prepare(tmp: Path) -> list[str]:
        write(tmp / name)
        (tmp / "exp.yaml").write_text(base.replace("{name: two_moons, n: 128}", f"{{file: {name}}}")
                                      .replace("{name: brackets, n: 64, length: 8}", f"{{file: {name}}}"))
        return ["check", str(tmp / "exp.yaml"), *extra]

    CASES.append(Case(id, prepare, code, pattern))


# ---------------------------------------------------------------------------------------- command line
cli("cli-no-config", ["run"], 2, r"usage: udm run .*the following arguments are required: config")
cli("cli-unknown-command", ["frobnicate"], 2, r"invalid choice: 'frobnicate'")
cli("cli-set-without-section", ["check", "{exp}", "--set", "steps=5"], 2,
    r"--set: override must be section\.key=value; got 'steps=5'")
cli("cli-set-without-equals", ["check", "{exp}", "--set", "train.steps"], 2, r"--set: override must be section\.key=value")
cli("cli-set-empty-key", ["check", "{exp}", "--set", "train.=3"], 2, r"--set: override must be section\.key=value")
cli("cli-set-bad-yaml", ["check", "{exp}", "--set", "train.betas=[0.9"], 2, r"--set train\.betas:1:\d+: YAML syntax must")
cli("cli-missing-file", ["run", "missing.yaml"], 2, r"config: the experiment file must exist; got 'missing\.yaml'")
cli("cli-config-is-a-folder", ["check", "."], 2, r"config: the experiment file must exist; got '\.'")
cli("cli-resume-and-overwrite", ["run", "{exp}", "--resume", "--overwrite"], 2,
    r"argument --overwrite: not allowed with argument --resume")
cli("cli-sample-not-a-run", ["sample", "."], 2, r"udm sample: RUN_DIR must be a trained run directory")
cli("cli-out-is-a-file", ["run", "{exp}", "--out", "{exp}"], 2, r"run\.out: the run directory must be a directory; got")
cli("cli-out-dot", ["run", "{exp}", "--out", "."], 2, r"run\.out: the run directory must be empty or a udm run directory")
cli("cli-resume-nothing", ["run", "{exp}", "--resume", "--out", "nothing"], 2,
    r"--resume: the run directory must exist and hold a checkpoint to resume; got 'nothing'")
cli("cli-eval-not-a-run", ["eval", ".", "--nll"], 2, r"udm eval: RUN_DIR must be a trained run directory")
cli("cli-steps-not-int", ["sample", ".", "--steps", "ten"], 2, r"argument --steps: invalid int value: 'ten'")
yaml_file("cli-binary-file", b"\xff\xfe\x00garbage", 2, r"config: the experiment file must be readable UTF-8 text")

# ------------------------------------------------------------------------------------------------ YAML
yaml_file("yaml-syntax", "corruption: {name: gaussian\ntime: {name: discrete}\n", 2,
          r"bad\.yaml:2:5: YAML syntax must be valid; got")
yaml_file("yaml-top-level-list", "- a\n- b\n", 2, r"bad\.yaml: the top level must be a mapping of sections")
yaml_file("yaml-top-level-scalar", "hello\n", 2, r"bad\.yaml: the top level must be a mapping of sections")
yaml_file("yaml-duplicate-section", BASE + "train: {steps: 1}\n", 2,
          r"bad\.yaml:8:1: the key 'train' must appear once in its mapping; got it again \(first on line 5\)")
yaml_file("yaml-duplicate-key", BASE.replace("width: 16,", "width: 16, width: 32,"), 2,
          r"bad\.yaml:3:\d+: the key 'width' must appear once in its mapping")
yaml_file("yaml-alias-bomb", "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{c}: &{c} [*{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}, *{p}]\n" for p, c in zip("abcdefgh", "bcdefghi")), 2,
          r"bad\.yaml: the document must hold at most 100000 values once its aliases are expanded; got \d+")
yaml_file("yaml-alias-bomb-in-a-section", BASE.replace("data: {name: two_moons, n: 128}",
          "data: {name: two_moons, n: 128}\nx: &x [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]\n" + "".join(
              f"x{i}: &x{i} [*{'x' if i == 0 else f'x{i - 1}'}, *{'x' if i == 0 else f'x{i - 1}'}, "
              f"*{'x' if i == 0 else f'x{i - 1}'}, *{'x' if i == 0 else f'x{i - 1}'}, "
              f"*{'x' if i == 0 else f'x{i - 1}'}, *{'x' if i == 0 else f'x{i - 1}'}, "
              f"*{'x' if i == 0 else f'x{i - 1}'}, *{'x' if i == 0 else f'x{i - 1}'}]\n" for i in range(6))), 2,
          r"must hold at most 100000 values once its aliases are expanded")
yaml_file("yaml-recursive-alias", "a: &a [1, *a]\n", 2, r"bad\.yaml:1:\d+: an alias must not contain itself")
yaml_file("yaml-python-tag", "x: !!python/object/apply:os.system ['true']\n", 2,
          r"YAML syntax must be valid; got could not determine a constructor for the tag")
yaml_file("yaml-deep-nesting", "a: " + "[" * 5000 + "]" * 5000 + "\n", 2, r"bad\.yaml: the document must nest")
sets("yaml-unknown-section", ["trian.steps=3"], 2, r"trian: the section must be one of .*Did you mean 'train'\?")
yaml_file("yaml-missing-section", BASE.replace("model: {name: mlp, width: 16, depth: 1, time_dim: 8}\n", ""), 2,
          r"bad\.yaml: model: the section must be present; got None\. Add a `model:` mapping")
sets("yaml-section-not-mapping", ["model=3"], 2, r"--set: override must be section\.key=value")
yaml_file("yaml-section-scalar", BASE.replace("model: {name: mlp, width: 16, depth: 1, time_dim: 8}", "model: 3"), 2,
          r"model: the section must be a mapping of key: value; got 3")
yaml_file("yaml-name-missing", BASE.replace("{name: mlp, width", "{width"), 2,
          r"model\.name: the key must be given \(a registered model\)")
sets("yaml-model-unknown", ["model.name=mpl"], 2, r"model\.name: the name must be a registered model; got 'mpl'\. "
                                                 r"Available: .*mlp.*Did you mean 'mlp'\?")
sets("yaml-model-name-int", ["model.name=3"], 2, r"model\.name: the name must be a registered model; got 3")
sets("yaml-unknown-key", ["model.widht=64"], 2, r"model\.widht: the key must be one of .*Did you mean 'width'\?")
sets("yaml-width-string", ["model.width=wide"], 2, r"model\.width: the value must be an integer >= 1; got 'wide'")
sets("yaml-width-negative", ["model.width=-3"], 2, r"model\.width: the value must be an integer >= 1; got -3")
sets("yaml-width-bool", ["model.width=true"], 2, r"model\.width: the value must be an integer >= 1; got True")
sets("yaml-width-float", ["model.width=16.5"], 2, r"model\.width: the value must be an integer >= 1; got 16\.5")
sets("yaml-corruption-unknown", ["corruption.name=gausian"], 2, r"corruption\.name: .*Did you mean 'gaussian'\?")
sets("yaml-schedule-unknown", ["corruption.schedule=cosin"], 2,
     r"exp\.yaml: corruption\.schedule: the name must be a registered schedule; got 'cosin'\. Available: .*"
     r"Did you mean 'cosine'\?")
sets("yaml-prediction-unknown", ["corruption.prediction=noise"], 2,
     r"corruption\.prediction: the value must be one of 'x0', 'eps', 'v', 'score', 'flow'; got 'noise'")
sets("yaml-time-steps-zero", ["time.steps=0"], 2, r"time: time discrete: steps must be an integer >= 1; got 0")
sets("yaml-time-unknown", ["time.name=discrte"], 2, r"time\.name: .*Did you mean 'discrete'\?")
sets("yaml-train-steps-negative", ["train.steps=-1"], 2, r"train\.steps: the value must be an integer >= 0; got -1")
sets("yaml-train-steps-float", ["train.steps=1.5"], 2, r"train\.steps: the value must be an integer >= 0; got 1\.5")
sets("yaml-batch-zero", ["train.batch_size=0"], 2, r"train\.batch_size: the value must be an integer >= 1; got 0")
sets("yaml-lr-zero", ["train.lr=0"], 2, r"train\.lr: the value must be a number > 0; got 0")
sets("yaml-lr-nan", ["train.lr=.nan"], 2, r"train\.lr: the value must be a number > 0; got nan")
sets("yaml-lr-inf", ["train.lr=.inf"], 2, r"train\.lr: the value must be a number > 0; got inf")
sets("yaml-lr-string", ["train.lr=fast"], 2, r"train\.lr: the value must be a number > 0; got 'fast'")
sets("yaml-weight-decay-negative", ["train.weight_decay=-0.1"], 2,
     r"train\.weight_decay: the value must be a number >= 0; got -0\.1")
sets("yaml-betas-one", ["train.betas=[0.9, 1.0]"], 2,
     r"train\.betas: the value must be a list \[a number in \[0, 1\), a number in \[0, 1\)\]; got \[0\.9, 1\.0\]")
sets("yaml-betas-short", ["train.betas=[0.9]"], 2, r"train\.betas: the value must be a list \[.*; got \[0\.9\]")
sets("yaml-ema-one", ["train.ema=1.0"], 2, r"train\.ema: the value must be a number in \[0, 1\); got 1\.0")
sets("yaml-grad-clip-negative", ["train.grad_clip=-1"], 2,
     r"train\.grad_clip: the value must be a number > 0 or None; got -1")
sets("yaml-warmup-negative", ["train.warmup=-5"], 2, r"train\.warmup: the value must be an integer >= 0; got -5")
sets("yaml-train-unknown-key", ["train.epochs=3"], 2, r"train\.epochs: the key must be one of .*; got 'epochs'")
sets("yaml-sampler-unknown", ["sample.sampler=dim"], 2, r"sample\.sampler: the name must be a registered sampler; "
                                                        r"got 'dim'.*Did you mean 'ddim'\?")
sets("yaml-refresh-without-eta", ["sample.sampler=refresh"], 2,
     r"exp\.yaml: sample: sampler 'refresh': give exactly one of eta or amount; got eta=None, amount=None")
sets("yaml-refresh-eta-high", ["sample.sampler=refresh", "sample.eta=1.5"], 2,
     r"sample: sampler 'refresh': eta must be in \[0, 1\]; got 1\.5")
sets("yaml-refresh-eta-negative", ["sample.sampler=refresh", "sample.eta=-0.1"], 2,
     r"sample: sampler 'refresh': eta must be in \[0, 1\]; got -0\.1")
sets("yaml-refresh-both", ["sample.sampler=refresh", "sample.eta=0.5", "sample.amount=0.5"], 2,
     r"give exactly one of eta or amount; got eta=0\.5, amount=0\.5")
sets("yaml-refresh-eta-string", ["sample.sampler=refresh", "sample.eta=half"], 2,
     r"sample\.eta: the value must be float or None; got 'half'")
sets("yaml-solver-unknown", ["sample.sampler=ode", "sample.solver=midpoint"], 2,
     r"sample\.solver: the value must be one of 'euler', 'heun', 'rk4'; got 'midpoint'")
sets("yaml-option-of-other-sampler", ["sample.solver=heun"], 2, r"sample\.solver: the key must be one of")
sets("yaml-sde-eta-negative", ["sample.sampler=sde", "sample.eta=-1"], 2,
     r"sample\.eta: the value must be a number >= 0; got -1")
sets("yaml-edm-churn-negative", ["sample.sampler=edm", "sample.churn=-5"], 2,
     r"sample\.churn: the value must be a number >= 0; got -5")
sets("yaml-corrector-unknown", ["sample.corrector={name: langevine}"], 2,
     r"sample\.corrector\.name: the name must be a registered corrector; got 'langevine'.*Did you mean 'langevin'\?")
sets("yaml-corrector-amount-negative", ["sample.corrector={name: refresh, amount: -0.5}"], 2,
     r"sample\.corrector\.amount: the value must be a number in \[0, 1\]; got -0\.5")
sets("yaml-corrector-schedule-unknown", ["sample.corrector={name: remask, schedule: loop}"], 2,
     r"sample\.corrector\.schedule: the value must be one of 'rescale', 'cap', 'confidence'; got 'loop'", base=MASK)
sets("yaml-corrector-unsupported", ["sample.corrector=langevin"], 2,
     r"sample: corrector 'langevin': corruption 'mask' must offer linear_gaussian; it lacks linear_gaussian\. "
     r"Correctors corruption 'mask' supports: refresh, remask\.", base=MASK)
sets("yaml-corrector-number", ["sample.corrector=3"], 2,
     r"sample\.corrector: the value must be a registered corrector name or a mapping")
sets("yaml-noise-unknown", ["sample.noise=per-sample"], 2,
     r"sample\.noise: the value must be one of 'shared', 'per_sample'; got 'per-sample'")
sets("yaml-spacing-unknown", ["sample.spacing=cubic"], 2,
     r"sample\.spacing: the value must be one of 'uniform', 'quadratic', 'trailing', 'logsnr', 'karras', "
     r"'optimal' \(the spacings time 'discrete' offers\); got 'cubic'")
sets("yaml-spacing-logsnr-needs-schedule", ["sample.spacing=logsnr"], 2,
     r"sample\.steps: grid spacing 'logsnr': the corruption must have a noise schedule with a log-SNR and its "
     r"inverse \(a noise_schedule, as gaussian has\); got 'mask'\. Use spacing 'uniform', 'quadratic' or 'trailing'",
     base=MASK.replace("{name: discrete, steps: 100}", "{name: continuous}"))
sets("yaml-spacing-karras-needs-schedule", ["sample.spacing=karras"], 2,
     r"sample\.steps: grid spacing 'karras': the corruption must have a noise schedule", base=MASK)
sets("yaml-nfe-adaptive", ["sample.sampler=adaptive", "sample.nfe=20"], 2,
     r"sampler 'adaptive': a budget of model calls \(nfe\) must be asked only of a sampler that steps on the grid; "
     r"got 'adaptive', which chooses its own steps", base=BASE.replace("sampler: ddim, steps: 4,", "sampler: ddim,"))
sets("yaml-multistep-order", ["sample.sampler=dpm++2m", "sample.order=4"], 2,
     r"sample: sampler 'multistep': order must be 1, 2 or 3; got 4\. Use 1 \(DDIM\), 2 or 3")
sets("yaml-sample-steps-zero", ["sample.steps=0"], 2, r"sample\.steps: the value must be an integer >= 1; got 0")
sets("yaml-sample-steps-too-many", ["sample.steps=500"], 2,
     r"sample\.steps: time discrete: grid: steps must be an integer >= 1 and at most 100; got 500")
sets("yaml-sample-n-zero", ["sample.n=0"], 2, r"sample\.n: the value must be an integer >= 1; got 0")
sets("yaml-family-options-gaussian", ["sample.family_options={temperature: 0.5}"], 2,
     r"sample\.family_options: the keys must be options of the q_theta family 'gaussian', which takes none; "
     r"got \['temperature'\]")
sets("yaml-family-options-list", ["sample.family_options=[1]"], 2,
     r"sample\.family_options: the value must be a mapping or None; got \[1\]")
sets("yaml-family-options-unknown", ["sample.family_options={temprature: 0.5}"], 2,
     r"sample\.family_options\.temprature: the key must be one of .*Did you mean 'temperature'\?", base=MASK)
sets("yaml-sample-seed-negative", ["sample.seed=-1"], 2, r"sample\.seed: the value must be an integer in \[0, "
                                                         r"4294967295\] or None; got -1")
sets("yaml-clamp-string", ["sample.clamp=maybe"], 2, r"sample\.clamp: the value must be bool; got 'maybe'")
sets("yaml-sampler-the-corruption-cannot-run", ["sample.sampler=ode"], 2,
     r"sample: sampler 'ode': corruption 'mask' must offer noise_posterior, vector_space; it lacks vector_space\. "
     r"Samplers 'mask' supports: .*invert", base=MASK)
sets("yaml-cold-on-tokens", ["sample.sampler=cold"], 2, r"sampler 'cold': corruption 'mask' must offer", base=MASK)
sets("yaml-metric-unknown", ["eval.sliced_wasserstien={}"], 2,
     r"eval\.sliced_wasserstien: the key must be a registered metric; .*Did you mean 'sliced_wasserstein'\?")
sets("yaml-metric-not-mapping", ["eval.sliced_wasserstein=3"], 2,
     r"eval\.sliced_wasserstein: the value must be a mapping of the metric's keywords \(or null\); got 3")
sets("yaml-metric-unknown-key", ["eval.sliced_wasserstein={projection: 3}"], 2,
     r"eval\.sliced_wasserstein\.projection: the key must be one of")
sets("yaml-nll-unknown-key", ["eval.nll={estimator: ode, probs: 2}"], 2,
     r"eval\.nll\.probs: the key must be one of .*Did you mean 'probes'\?")
sets("yaml-nll-estimator-unknown", ["eval.nll={estimator: odee}"], 2,
     r"eval\.nll\.estimator: the name must be a registered estimator; got 'odee'.*Did you mean 'ode'\?")
sets("yaml-nll-estimator-the-corruption-cannot-run", ["eval.nll={estimator: ode}"], 2,
     r"eval\.nll: likelihood estimator 'ode': the corruption must be linear-Gaussian .*; got 'mask'\. Estimators "
     r"'mask' supports: elbo_masked", base=MASK)
sets("yaml-nll-bits-of-unquantised-data", ["eval.nll={units: bits}"], 2,
     r"eval\.nll: likelihood: bits per dimension must come with the data's quantisation; got none declared for "
     r"data shaped \('n', 2\)\. Declare the data's levels \(data\.quantisation")
sets("yaml-seed-negative", ["run.seed=-1"], 2, r"run\.seed: the value must be an integer in \[0, 4294967295\]; got -1")
sets("yaml-seed-huge", ["run.seed=1099511627776"], 2, r"run\.seed: the value must be an integer in \[0, 4294967295\]")
sets("yaml-device-missing", ["run.device=cuda:99"], 2,
     r"run\.device: the device must be available on this machine; got 'cuda:99'.* Available: cpu")
sets("yaml-device-nonsense", ["run.device=gpu"], 2, r"run\.device: the device must be available on this machine; got 'gpu'")
sets("yaml-device-int", ["run.device=0"], 2, r"run\.device: the value must be str or None; got 0")
sets("yaml-keep-zero", ["run.keep=0"], 2, r"run\.keep: the value must be an integer >= 1; got 0")
sets("yaml-log-every-zero", ["run.log_every=0"], 2, r"run\.log_every: the value must be an integer >= 1; got 0")
sets("yaml-checkpoint-every-negative", ["run.checkpoint_every=-1"], 2,
     r"run\.checkpoint_every: the value must be an integer >= 0; got -1")
sets("yaml-out-int", ["run.out=3"], 2, r"run\.out: the value must be str or None; got 3")
sets("yaml-run-unknown", ["run.outdir=x"], 2, r"run\.outdir: the key must be one of .*Did you mean 'out'\?")
sets("yaml-data-name-and-file", ["data.file=x.npy"], 2, r"data\.name: the key must be one of file, quantisation; got 'name'")
yaml_file("yaml-data-file-missing-real", BASE.replace("{name: two_moons, n: 128}", "{file: missing.npy}"), 2,
          r"data\.file: the file must be an existing file; got '.*missing\.npy'\. Check the path")
sets("yaml-dataset-n-zero", ["data.n=0"], 2, r"data: .*n must be")
# composed and learned corruptions (issue 14): nested plugin specs are checked with their key paths
LATENT = MASK.replace("{name: mask, schedule: linear}", "{name: latent, encoder: {name: embedding, dim: 4}}")
CHAIN = BASE.replace("{name: gaussian, schedule: cosine}", "{name: chain, parts: [mask_pixels, gaussian]}")
PRODUCT = (BASE.replace("{name: gaussian, schedule: cosine}", "{name: product, parts: {point: gaussian, label: mask}}")
           .replace("{name: mlp, width: 16, depth: 1, time_dim: 8}", "{name: joint_mlp, width: 16, depth: 1}")
           .replace("{name: two_moons, n: 128}", "{name: labelled_blobs, n: 128}"))
yaml_file("yaml-nested-key-unknown", LATENT.replace("dim: 4", "dimm: 4"), 2,
          r"bad\.yaml: corruption\.encoder\.dimm: the key must be one of dim, .*Did you mean 'dim'\?")
yaml_file("yaml-nested-value-type", LATENT.replace("dim: 4}}", "dim: 4}, inner: {name: gaussian, schedule: "
                                                                   "{name: linear, beta_end: high}}}"), 2,
          r"bad\.yaml: corruption\.inner\.schedule\.beta_end: the value must be float; got 'high'")
yaml_file("yaml-nested-name-unknown", CHAIN.replace("[mask_pixels, gaussian]", "[mask_pixels, gausian]"), 2,
          r"bad\.yaml: corruption\.parts\[1\]: the name must be a registered corruption; got 'gausian'\. "
          r"Available: .*Did you mean 'gaussian'\?")
yaml_file("yaml-nested-name-missing", CHAIN.replace("[mask_pixels, gaussian]", "[{fill: -2}, gaussian]"), 2,
          r"bad\.yaml: corruption\.parts: the value must be a list of a registered corruption name or a mapping "
          r"\{name: <corruption>, <options>\}; got \[\{'fill': -2\}, 'gaussian'\]")
yaml_file("yaml-product-part-key-unknown", PRODUCT.replace("label: mask", "label: {name: mask, shedule: linear}"), 2,
          r"bad\.yaml: corruption\.parts\.label\.shedule: the key must be one of .*Did you mean 'schedule'\?")
yaml_file("yaml-chain-incompatible-kinds", MASK.replace("{name: mask, schedule: linear}",
                                                        "{name: chain, parts: [mask, gaussian]}"), 2,
          r"bad\.yaml: corruption: corruption chain: parts\[1\] must accept what parts\[0\] \('mask'\) produces, "
          r"data of kind 'tokens'; got 'gaussian', which takes data of kind 'continuous'")
yaml_file("yaml-product-part-without-data", PRODUCT.replace("label: mask", "label: mask, image: gaussian"), 2,
          r"bad\.yaml: data 'labelled_blobs': corruption\.parts\.image must have data \(a key 'image' of the "
          r"data\); got data with keys point, label\. Name the parts after the data's keys")
yaml_file("yaml-product-on-a-tensor", PRODUCT.replace("{name: labelled_blobs, n: 128}", "{name: two_moons, n: 128}"), 2,
          r"data 'two_moons': the data must be a mapping part -> tensor \(n, \.\.\.\) for corruption 'product'")
yaml_file("yaml-parts-on-a-tensor-corruption", BASE.replace("{name: two_moons, n: 128}",
                                                            "{name: labelled_blobs, n: 128}"), 2,
          r"data 'labelled_blobs': the data must be a tensor \(n, \.\.\.\) for corruption 'gaussian'; got a mapping "
          r"of parts \(point, label\)\. Corrupt each part with a product")
sets("yaml-chain-sampler-it-lacks", ["sample.sampler=ddim"], 2,
     r"sample: .*corruption 'chain' must offer noise_posterior; it lacks noise_posterior \(p\(eps_1, \.\.\., eps_n "
     r"\| x_t, x_0\) needs the law of the intermediate states given x_t", base=CHAIN.replace("ddim", "naive"))

# ------------------------------------------------------------------------------------------ data files
data_file("data-empty", "d.npy", lambda p: np.save(p, np.zeros((0, 2), np.float32)), 2,
          r"data\.file '.*d\.npy': the data must be a non-empty array \(n, \.\.\.\) .*; got shape \(0, 2\)")
data_file("data-one-dimensional", "d.npy", lambda p: np.save(p, np.zeros(10, np.float32)), 2,
          r"the data must be a non-empty array \(n, \.\.\.\).*; got shape \(10,\)\. Reshape it to \(n, 1\)")
data_file("data-nan", "d.npy", lambda p: np.save(p, np.array([[0, 0], [np.nan, 1], [2, 2]], np.float32)), 2,
          r"data\.file '.*d\.npy': the data must be finite; got 1 NaN/inf values in 1 examples \(first: index 1\)")
data_file("data-inf", "d.csv", lambda p: p.write_text("0,0\n1,1\ninf,2\n"), 2,
          r"the data must be finite; got 1 NaN/inf values in 1 examples \(first: index 2\)")
data_file("data-int-for-gaussian", "d.npy", lambda p: np.save(p, np.arange(20).reshape(10, 2)), 2,
          r"the data must be floating point for corruption 'gaussian' \(data kind 'continuous'\); got torch\.int64")
data_file("data-float-for-mask", "d.npy", lambda p: np.save(p, np.zeros((8, 4), np.float32)), 2,
          r"the data must be integer token ids for corruption 'mask' \(data kind 'tokens'\); got torch\.float32",
          base=MASK)
data_file("data-negative-tokens", "d.npy", lambda p: np.save(p, -np.ones((8, 4), np.int64)), 2,
          r"token ids must be >= 0; got -1", base=MASK)
data_file("data-pickled-object", "d.npy", lambda p: np.save(p, np.array([{"a": 1}, None], dtype=object)), 2,
          r"data\.file: the file must be a readable \.npy array \(no pickled objects\); got .*ValueError")
data_file("data-garbage-npy", "d.npy", lambda p: p.write_bytes(b"\x93NUMPY garbage"), 2,
          r"data\.file: the file must be a readable \.npy array")
data_file("data-two-tensors", "d.safetensors", lambda p: save_file({"a": torch.zeros(2, 2), "b": torch.zeros(2)}, str(p)),
          2, r"a \.safetensors data file must hold exactly one tensor; got keys \['a', 'b'\]")
data_file("data-garbage-safetensors", "d.safetensors", lambda p: p.write_bytes(b"\x10\x00garbage"), 2,
          r"data\.file: the file must be a readable \.safetensors array")
data_file("data-csv-text", "d.csv", lambda p: p.write_text("a,b\nc,d\n"), 2, r"data\.file: the file must be a readable \.csv")
data_file("data-unknown-suffix", "d.json", lambda p: p.write_text("[[1, 2]]"), 2,
          r"data\.file: the file type must be \.npy, \.safetensors, \.txt or \.csv; got '\.json'")
data_file("data-strings", "d.npy", lambda p: np.save(p, np.array([["a", "b"]])), 2,
          r"the array must hold numbers \(bool, integer or float\); got dtype <U1")
data_file("data-complex", "d.npy", lambda p: np.save(p, np.ones((4, 2), np.complex64)), 2,
          r"the array must hold numbers \(bool, integer or float\); got dtype complex64")
data_file("data-wrong-shape-for-blur", "d.npy", lambda p: np.save(p, np.zeros((8, 2), np.float32)), 2,
          r"exp\.yaml: corruption: corruption blur: data must be float images \(batch, channels, height, width\); "
          r"got \(8, 2\)",
          base=TINY.replace("{name: gaussian, schedule: cosine}", "{name: blur}"))
data_file("data-extreme-scale-warns", "d.npy", lambda p: np.save(p, np.full((8, 2), 1e6, np.float32)), 0,
          r"udm check: warning: .*d\.npy': the data's scale should be of order 1 \(the prior is unit-scale noise\); "
          r"got max \|x\| = 1e\+06")

# ---------------------------------------------------------------------------------------- checkpoints
TRAINED: dict[str, Path] = {}


def with_run(id: str, damage: Callable[[Path], Any], argv: list[str], code: int, pattern: str) -> None:
    def prepare(tmp: Path) -> list[str]:
        shutil.copytree(TRAINED["run"], tmp / "r", symlinks=True)
        (tmp / "exp.yaml").write_text(BASE)
        damage(tmp / "r")
        return [a.replace("{exp}", str(tmp / "exp.yaml")) for a in argv]

    CASES.append(Case(id, prepare, code, pattern))


def _flip(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    raw[-20] ^= 1
    path.write_bytes(bytes(raw))


NEWEST = "checkpoints/step-00000006"
with_run("ckpt-bit-flip-sample-falls-back", lambda r: _flip(r / NEWEST / "model.safetensors"), ["sample", "r"], 0,
         r"udm sample: warning: checkpoint '.*step-00000006': model\.safetensors must match the checksum written with "
         r"it; got .* Falling back to the previous checkpoint\.")
with_run("ckpt-truncated-sample-falls-back", lambda r: (r / NEWEST / "ema.safetensors").write_bytes(b"\x00" * 8),
         ["sample", "r"], 0, r"ema\.safetensors must match the checksum written with it; got 8 bytes")
with_run("ckpt-missing-ema", lambda r: (r / NEWEST / "ema.safetensors").unlink(), ["sample", "r"], 0,
         r"ema\.safetensors must be present; got it missing\. The checkpoint is incomplete")
with_run("ckpt-state-json-garbage", lambda r: (r / NEWEST / "state.json").write_text("{"), ["sample", "r"], 0,
         r"state\.json must be valid JSON")
with_run("ckpt-resume-falls-back", lambda r: _flip(r / NEWEST / "optimizer.safetensors"),
         ["train", "{exp}", "--out", "r", "--resume", "--quiet"], 0,
         r"udm train: warning: .*optimizer\.safetensors must match the checksum.*moved to '.*corrupt-step-00000006'")
with_run("ckpt-all-damaged", lambda r: [(c / "model.safetensors").unlink() for c in (r / "checkpoints").iterdir()],
         ["sample", "r"], 1, r"udm sample: failed: CheckpointError: checkpoints: at least one checkpoint in '.*' must "
                             r"be intact; got 2 damaged ones")
with_run("ckpt-resume-changed-model", lambda r: None, ["train", "{exp}", "--out", "r", "--resume", "--set",
                                                       "model.depth=2"], 2,
         r"--resume: the experiment must match the run it resumes .*model\.depth: 1 -> 2")
with_run("ckpt-fresh-run-over-finished", lambda r: None, ["train", "{exp}", "--out", "r"], 2,
         r"run\.out: the run directory must not hold checkpoints unless resuming")
with_run("ckpt-config-link", lambda r: ((r / "config.yaml").unlink(), (r / "config.yaml").symlink_to(r / "loss.png")),
         ["sample", "r"], 2, r"udm sample: '.*r/config\.yaml' must not be a symbolic link")
with_run("ckpt-metrics-link-on-resume",
         lambda r: ((r / "metrics.jsonl").unlink(), (r / "metrics.jsonl").symlink_to(r / "loss.png")),
         ["train", "{exp}", "--out", "r", "--resume"], 2, r"run\.out: '.*r/metrics\.jsonl' must not be a symbolic link")
with_run("ckpt-sample-unsupported-sampler", lambda r: None, ["sample", "r", "--sampler", "confidence"], 2,
         r"sampler 'confidence': corruption 'gaussian' must offer .*Samplers 'gaussian' supports:")
with_run("ckpt-sample-unknown-sampler", lambda r: None, ["sample", "r", "--sampler", "ddimm"], 2,
         r"sample\.sampler: the name must be a registered sampler; got 'ddimm'")
with_run("ckpt-sample-n-negative", lambda r: None, ["sample", "r", "--n", "-1"], 2,
         r"sample\.n: the value must be an integer >= 1; got -1")
with_run("ckpt-sample-bad-option", lambda r: None, ["sample", "r", "--set", "sample.etaa=1"], 2,
         r"sample\.etaa: the key must be one of")


# ---------------------------------------------------------------------------- q_theta's variance (issue 10)
def _fit(r: Path, *args: str) -> None:
    """A table fitted into the run ``r`` as `udm fit-variance` writes it (on the run's 4-step grid)."""
    assert main(["fit-variance", str(r), "--samples", "20", *args, "--quiet"]) == 0


def _train_on(r: Path) -> None:
    """Fit a table, then train the run 3 steps further (a newer checkpoint than the table's)."""
    _fit(r)
    assert main(["train", str(r.parent / "exp.yaml"), "--out", str(r), "--resume", "--set", "train.steps=9",
                 "--quiet"]) == 0


with_run("variance-not-fitted", lambda r: None, ["sample", "r", "--variance", "analytic"], 2,
         r"udm sample: error: sample\.variance: variance 'analytic' must be fitted on this run first; got no analytic "
         r"table in 'r/variance'\. Fit it with `udm fit-variance r --source analytic --samples 1000`")
with_run("variance-other-grid", _fit, ["sample", "r", "--variance", "analytic", "--steps", "8"], 2,
         r"variance table 'analytic' must be fitted on the sampling grid; got a table fitted for \{\"steps\": 4, "
         r"\"spacing\": \"uniform\"\}, which lacks 4 of the 8 times of the grid \(8 uniform steps: t = 0\.88, .*Refit it "
         r"with `udm fit-variance r --source analytic --samples 20 --steps 8 --spacing uniform`")
with_run("variance-other-schedule", _fit,
         ["sample", "r", "--variance", "analytic", "--set", "corruption.schedule=linear"], 2,
         r"variance table 'analytic' must be fitted for the corruption \(and its schedule\) being sampled; got a table "
         r"fitted for GaussianCorruption\(schedule=cosine\(s=0\.008\), prediction='v'\), but the run samples with "
         r"GaussianCorruption\(schedule=linear")
with_run("variance-other-checkpoint", _train_on, ["sample", "r", "--variance", "analytic"], 2,
         r"variance table 'analytic' must be fitted on the checkpoint being sampled; got a table fitted at step 6, the "
         r"checkpoint is step 9")
with_run("variance-damaged-table", lambda r: (_fit(r), _flip(r / "variance" / "analytic.safetensors")),
         ["sample", "r", "--variance", "analytic"], 2,
         r"the variance table '.*analytic\.safetensors' must be intact; got the tensors do not match the checksum")
with_run("variance-head-missing", lambda r: None, ["sample", "r", "--variance", "sn"], 2,
         r"variance 'sn' needs a run trained with train\.stage: variance_head and head: sn; got a run without a variance "
         r"head")
with_run("variance-unknown-name", lambda r: None, ["sample", "r", "--variance", "analytik"], 2,
         r"sample\.variance: the value must be one of .*'analytic'.*; got 'analytik'")
with_run("fit-variance-exact-source", lambda r: None, ["fit-variance", "r", "--source", "exact"], 2,
         r"udm fit-variance: --source must be one of analytic, residual; got 'exact'\. .*exact needs an oracle")
with_run("fit-variance-optimal-grid", lambda r: None, ["fit-variance", "r", "--steps", "4", "--spacing", "optimal"], 2,
         r"fit_variance: spacing must be a fixed grid spacing to fit on a sampling grid; got 'optimal'")
sets("yaml-variance-on-mask", ["sample.variance=analytic"], 2,
     r"sample\.variance: variance 'analytic' needs a linear-Gaussian corruption with a Gaussian q_theta; got 'mask'",
     base=MASK)
sets("yaml-optimal-without-variance", ["sample.spacing=optimal"], 2,
     r"sample\.spacing: 'optimal' must come with a fitted variance \(sample\.variance: analytic or residual\); got "
     r"variance None")
sets("yaml-draws-without-variance", ["sample.draws=last"], 2,
     r"sample\.draws: 'last' draws x_0 from q_theta, so it must come with a variance \(sample\.variance: analytic, "
     r"residual, small, large, sn or npr\); got variance None\. Set sample\.variance \(udm sample RUN --variance "
     r"NAME\), or sample\.draws: steps\.")
sets("yaml-draws-unknown", ["sample.draws=end"], 2, r"sample\.draws: the value must be one of .*'last'.*; got 'end'")
sets("yaml-sn-variance-without-head", ["sample.variance=sn"], 2,
     r"sample\.variance: variance 'sn' needs train\.stage: variance_head with train\.head: sn; got stage 'mean'")
sets("yaml-head-stage-without-init", ["train.stage=variance_head"], 2,
     r"train\.init: the first stage's run directory must be a trained run .*; got None")


# --------------------------------------------------------------------------------------------- the API
@dataclass
class ApiCase:
    id: str
    call: Callable[[udm.Registry], Any]
    code: int
    pattern: str


API: list[ApiCase] = []


def api(id: str, call: Callable[[udm.Registry], Any], code: int, pattern: str) -> None:
    API.append(ApiCase(id, call, code, pattern))


def _parts(reg: udm.Registry, **corruption: Any) -> tuple[Any, Any, Any]:
    torch.manual_seed(0)
    net = reg.create("model", "mlp", data_shape=[2], width=8, depth=1, time_dim=8)
    return net, reg.create("corruption", "gaussian", **corruption), reg.create("time", "discrete", steps=20)


def sample(reg: udm.Registry, **kw: Any) -> Any:
    net, corr, time = _parts(reg)
    args = {"shape": (4, 2), "sampler": "ddim", "steps": 2, "registry": reg, **kw}
    return udm.sample(kw.pop("model", net), corr, kw.pop("time_type", time), **{k: v for k, v in args.items()
                                                                                if k not in ("model", "time_type")})


def train(reg: udm.Registry, data: Any = None, **kw: Any) -> Any:
    net, corr, time = _parts(reg)
    data = torch.zeros(16, 2) if data is None else data
    return udm.train(kw.pop("network", net), corr, time, data, **{"steps": 1, "batch_size": 4, **kw})


api("api-sample-shape-vs-model", lambda r: sample(r, shape=(4, 3)), 2,
    r"udm\.sample: shape must be \(n, \*data_shape\) = \(n, 2\) for this model; got \(4, 3\)\. Use shape=\(4, 2\)")
api("api-sample-shape-zero", lambda r: sample(r, shape=(0, 2)), 2, r"udm\.sample: shape must be a tuple \(n, "
                                                                    r"\*data_shape\) of integers >= 1; got \(0, 2\)")
api("api-sample-shape-int", lambda r: sample(r, shape=4), 2, r"udm\.sample: shape must be a tuple .*; got 4")
api("api-sample-shape-float", lambda r: sample(r, shape=(4.0, 2)), 2, r"shape must be a tuple .*; got \(4\.0, 2\)")
api("api-sample-steps-zero", lambda r: sample(r, steps=0), 2, r"udm\.sample: steps must be an integer >= 1; got 0")
api("api-sample-steps-float", lambda r: sample(r, steps=2.0), 2, r"udm\.sample: steps must be an integer >= 1; got 2\.0")
api("api-sample-generator-type", lambda r: sample(r, generator=0), 2,
    r"udm\.sample: generator must be a torch\.Generator or None; got int")
api("api-sample-unknown-option", lambda r: sample(r, sampler="refresh", etaa=0.5), 2,
    r"udm\.sample: sampler 'refresh': option\.etaa: the key must be one of amount, eta; got 'etaa'.*Did you mean 'eta'\?")
api("api-sample-option-type", lambda r: sample(r, sampler="refresh", eta="high"), 2,
    r"sampler 'refresh': option\.eta: the value must be float or None; got 'high'\. Pass eta=<float or None>")
api("api-sample-option-of-other-sampler", lambda r: sample(r, solver="heun"), 2,
    r"sampler 'ddim': option\.solver: the key must be one of \(none\); got 'solver'")
api("api-sample-spacing", lambda r: sample(r, spacing="cubic"), 2,
    r"udm\.sample: spacing must be one of 'uniform', 'quadratic', 'trailing', 'logsnr', 'karras', "
    r"'optimal' \(what Discrete offers\); got 'cubic'")
api("api-sample-nfe-adaptive", lambda r: sample(r, sampler="adaptive", steps=None, nfe=20), 2,
    r"sampler 'adaptive': a budget of model calls \(nfe\) must be asked only of a sampler that steps on the grid")
api("api-sample-solver-needs-lg", lambda r: udm.sample(*_parts(r)[:1], r.create("corruption", "mask", vocab_size=4),
                                                       _parts(r)[2], shape=(2, 2), sampler="dpm++2m", registry=r), 2,
    r"sampler 'dpm\+\+2m': corruption 'mask' must offer linear_gaussian; it lacks linear_gaussian\. Samplers 'mask' "
    r"supports: .*confidence")
api("api-sample-sampler-unknown", lambda r: sample(r, sampler="dimm"), 2,
    r"sampler 'dimm': name must be a registered sampler; got 'dimm'.*Did you mean 'ddim'\?")
api("api-sample-sampler-type", lambda r: sample(r, sampler=3), 2,
    r"udm\.sample: sampler must be a registered sampler's name or a udm\.SamplerSpec; got int")
api("api-sample-family-options", lambda r: sample(r, family_options={"temperature": 0.5}), 2,
    r"udm\.sample\.family_options: the keys must be options of the q_theta family 'gaussian', which takes none")
api("api-sample-model-not-callable", lambda r: sample(r, model=3), 2,
    r"udm\.sample: model must be a torch\.nn\.Module or a denoiser .*; got int")
api("api-sample-time-type-wrong", lambda r: sample(r, time_type="discrete"), 2,
    r"udm\.sample: time_type must be a udm time \(with sample_train, grid, encode\); got str, which lacks")
api("api-sample-sde-eta-negative", lambda r: sample(r, sampler="sde", eta=-1.0), 2,
    r"udm\.sample: sampler 'sde': option\.eta: the value must be a number >= 0; got -1\.0")
api("api-sample-corrector-unsupported", lambda r: udm.sample(
    lambda x, t, g: x, r.create("corruption", "mask", vocab_size=4), _parts(r)[2], shape=(2, 2), steps=2,
    corrector="ald", registry=r), 2,
    r"udm\.sample: corrector 'ald': corruption 'mask' must offer linear_gaussian; it lacks linear_gaussian\. "
    r"Correctors corruption 'mask' supports: refresh, remask\.")
api("api-sample-corrector-amount", lambda r: sample(r, corrector={"name": "refresh", "amount": -0.1}), 2,
    r"udm\.sample: corrector 'refresh': amount must be a number in \[0, 1\]; got -0\.1")
api("api-sample-corrector-unknown", lambda r: sample(r, corrector="langevn"), 2,
    r"udm\.sample: corrector 'langevn': name must be a registered corrector; got 'langevn'.*Did you mean 'langevin'")
api("api-sample-edm-churn-blur", lambda r: udm.sample(
    lambda x, t, g: x, r.create("corruption", "blur"), r.create("time", "continuous"), shape=(2, 1, 8, 8),
    sampler="edm", steps=3, churn=5.0, registry=r, x_init=torch.zeros(2, 1, 8, 8)), 2,
    r"sampler 'edm': churn > 0 needs one noise level sigma = s/a per time; got corruption 'blur'")
api("api-sample-per-sample-batch", lambda r: sample(r, generator=udm.PerSampleGenerator(0, 3)), 2,
    r"udm\.sample: generator must have one stream per sample \(shape\[0\] = 4\); got a udm\.PerSampleGenerator "
    r"for 3 samples")
api("api-sample-capability", lambda r: udm.sample(*_parts(r)[:1], r.create("corruption", "mask", vocab_size=4),
                                                   _parts(r)[2], shape=(2, 2), sampler="ode", registry=r), 2,
    r"sampler 'ode': corruption 'mask' must offer noise_posterior, vector_space; it lacks vector_space")
api("api-train-nan", lambda r: train(r, data=torch.tensor([[0.0, 0.0], [float("nan"), 1.0]])), 2,
    r"udm\.train: data: the data must be finite; got 1 NaN/inf values in 1 examples \(first: index 1\)")
api("api-train-int-data", lambda r: train(r, data=torch.zeros(8, 2, dtype=torch.long)), 2,
    r"udm\.train: data: the data must be floating point for corruption 'gaussian'")
api("api-train-data-shape", lambda r: train(r, data=torch.zeros(8, 3)), 2,
    r"udm\.train: data must have shape \(n, 2\) for this network \(its data_shape\); got \(8, 3\)")
api("api-train-empty", lambda r: train(r, data=torch.zeros(0, 2)), 2, r"udm\.train: data: the data must be a non-empty")
api("api-train-list", lambda r: train(r, data=[[0.0, 1.0]]), 2,
    r"udm\.train: data: the data must be a tensor \(n, \.\.\.\) or udm\.Sequences; got list")
api("api-train-steps", lambda r: train(r, steps=-1), 2, r"udm\.train\.steps: the value must be an integer >= 0; got -1")
api("api-train-batch", lambda r: train(r, batch_size=0), 2, r"udm\.train\.batch_size: the value must be an integer >= 1")
api("api-train-unknown-option", lambda r: train(r, lrr=0.1), 2,
    r"udm\.train\.lrr: the key must be one of .*; got 'lrr'\. Remove or rename it\. Did you mean 'lr'\?")
api("api-train-lr", lambda r: train(r, lr=-1.0), 2, r"udm\.train\.lr: the value must be a number > 0; got -1\.0")
api("api-train-grad-clip", lambda r: train(r, grad_clip=-1.0), 2,
    r"udm\.train\.grad_clip: the value must be a number > 0 or None; got -1\.0")
api("api-train-network", lambda r: train(r, network=lambda x, t: x), 2,
    r"udm\.train: network must be a torch\.nn\.Module with parameters; got function")
api("api-trainer-ema", lambda r: udm.Trainer(*_parts(r), ema=1.0), 2,
    r"udm\.Trainer\.ema: the value must be a number in \[0, 1\); got 1\.0")
api("api-create-type", lambda r: r.create("corruption", "gaussian", schedule=3), 2,
    r"corruption 'gaussian': schedule must be a registered schedule name or a mapping \{name: <schedule>, "
    r"<options>\}; got 3\.")
api("api-create-range", lambda r: r.create("model", "mlp", width=-1), 2,
    r"model 'mlp': width must be an integer >= 1; got -1")
api("api-create-unknown-key", lambda r: r.create("model", "mlp", widht=3), 2,
    r"model 'mlp': keyword arguments must match its signature .*Did you mean 'width'\?")
api("api-create-sampler", lambda r: r.create("sampler", "ddim"), 2,
    r"sampler 'ddim': create\(\) must be used for factories")
api("api-create-metric", lambda r: r.create("metric", "sliced_wasserstein"), 2,
    r"metric 'sliced_wasserstein': create\(\) must be used for factories")
api("api-unknown-kind", lambda r: r.names("corruptions"), 2, r"registry: kind must be one of .*Did you mean 'corruption'")
api("api-likelihood-unsupported-estimator", lambda r: udm.likelihood(
    *_parts(r)[:1], torch.zeros(4, 2), "elbo_deletion", corruption=_parts(r)[1], time_type=_parts(r)[2]), 2,
    r"likelihood estimator 'elbo_deletion': the corruption must be the delete corruption .*; got 'gaussian'\. "
    r"Estimators 'gaussian' supports: elbo_continuous, elbo_discrete, ode\.")
api("api-likelihood-bits-without-quantisation", lambda r: udm.likelihood(
    *_parts(r)[:1], torch.zeros(4, 2), "ode", corruption=_parts(r)[1], time_type=_parts(r)[2], units="bits"), 2,
    r"udm\.likelihood: bits per dimension must come with the data's quantisation; got none declared for data shaped "
    r"\(4, 2\)\. Declare the data's levels \(data\.quantisation")
api("api-likelihood-option-type", lambda r: udm.likelihood(
    *_parts(r)[:1], torch.zeros(4, 2), "ode", corruption=_parts(r)[1], time_type=_parts(r)[2], solver="rk23"), 2,
    r"udm\.likelihood\.solver: the value must be one of 'rk45', 'euler', 'heun', 'rk4'; got 'rk23'")
api("api-experiment-dict", lambda r: udm.Experiment.from_dict({"corruption": {"name": "gaussian"}}, r), 2,
    r"<dict>: time: the section must be present; got None")


# ----------------------------------------------------------------------------------------- plugins
class _EntryPoint:
    def __init__(self, name: str, load: Callable[[], Any]) -> None:
        self.name, self.value, self._load = name, f"{name}_module", load
        self.dist = types.SimpleNamespace(name=f"udm-{name}", version="1.0")

    def load(self) -> Any:
        return self._load()


def _exits() -> Any:
    raise SystemExit(3)


def _base_exception_hook() -> Any:
    plugin = types.ModuleType("raiser")

    @udm.hookimpl
    def udm_register_datasets(register):
        raise BaseException("boom")

    plugin.udm_register_datasets = udm_register_datasets
    return plugin


def _isolated(r: udm.Registry, load: Callable[[], Any]) -> Any:
    reg = udm.load_registry(entry_points=[_EntryPoint("bad", load)], strict=False)
    (info,) = reg.plugins
    raise udm.PluginError(f"{info.label}: {info.error}")  # what `udm plugins` shows, as an exception to match


api("plugin-sys-exit-at-import", lambda r: _isolated(r, _exits), 2,
    r"udm-bad 1\.0 \(entry point 'bad'\): import failed: SystemExit: 3")
api("plugin-base-exception-in-hook", lambda r: _isolated(r, _base_exception_hook), 2,
    r"udm-bad 1\.0 \(entry point 'bad'\): udm_register_datasets raised BaseException: boom")
api("plugin-autoload-disabled", lambda r: udm.load_registry(autoload=False).get("corruption", "gaussian"), 2,
    r"corruption 'gaussian': name must be a registered corruption; got 'gaussian'\. Available: \(none\)\. Plugin loading "
    r"was restricted by UDM_DISABLE_PLUGIN_AUTOLOAD=1; unset it")
api("plugin-only-list", lambda r: udm.load_registry(only=["toy2d"]).get("corruption", "gaussian"), 2,
    r"Available: \(none\)\. Plugin loading was restricted by UDM_PLUGINS=toy2d; unset it to load every installed plugin")


# ------------------------------------------------------------------------------------------ the tests
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("trained")
    (folder / "exp.yaml").write_text(BASE)
    assert main(["run", str(folder / "exp.yaml"), "--out", str(folder / "run"), "--quiet"]) == 0
    TRAINED["run"] = folder / "run"
    return folder / "run"


def test_the_table_has_at_least_100_rows():
    assert len(CASES) + len(API) >= 100
    assert len({c.id for c in CASES} | {a.id for a in API}) == len(CASES) + len(API)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_on_the_command_line(case, trained, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(case.prepare(tmp_path))
    err = capsys.readouterr().err
    assert code == case.code, err
    assert re.search(case.pattern, err, re.S), err
    assert "Traceback" not in err
    assert err.startswith(("udm ", "usage: udm")), err  # our own one-line message (or argparse's usage)
    if code not in (0, 130) and not err.startswith("usage:"):
        assert TEMPLATE.search(err.splitlines()[-1]), err  # <where>: <what> must be <rule>; got <value>.


@pytest.mark.parametrize("case", API, ids=[a.id for a in API])
def test_bad_input_through_the_python_api(case, reg, recwarn):
    with pytest.raises(BaseException) as info:
        case.call(reg)
    assert isinstance(info.value, UdmError), f"a raw {type(info.value).__name__}: {info.value}"
    assert exit_code(info.value) == case.code
    assert re.search(case.pattern, str(info.value)), str(info.value)
    assert TEMPLATE.search(str(info.value)) or case.id.startswith("plugin-"), str(info.value)


def test_unknown_names_in_the_block_list_are_warned_about(monkeypatch):
    monkeypatch.setenv("UDM_BLOCK_PLUGINS", "gausian,toy2d")
    with pytest.warns(UdmWarning, match=r"UDM_BLOCK_PLUGINS: every name must be an installed entry point or "
                                        r"distribution; got 'gausian', which matches none\. Did you mean 'gaussian'\?"):
        reg = udm.load_registry()
    assert "two_moons" not in reg.names("dataset")  # the known name still blocks


def test_plugin_output_and_sys_exit_never_break_udm_plugins_json(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "udm_chatty.py").write_text("print('hello from a plugin')\nimport udm\n\n@udm.hookimpl\n"
                                            "def udm_register_datasets(register):\n    print('registering')\n")
    (tmp_path / "udm_exits.py").write_text("import sys\nsys.exit('bye')\n")  # used to take down every command
    for name in ("chatty", "exits"):
        info = tmp_path / f"udm_{name}-0.1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: udm-{name}\nVersion: 0.1.0\n")
        (info / "entry_points.txt").write_text(f"[udm]\n{name} = udm_{name}\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("UDM_")}, "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "udm", "plugins", "--json"], capture_output=True, text=True, env=env,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)  # parses: nothing else on stdout
    plugins = {p["distribution"]: p for p in report["plugins"]}
    assert plugins["udm-chatty"]["status"] == "loaded" and plugins["udm-exits"]["status"] == "failed"
    assert plugins["udm-exits"]["error"] == "import failed: SystemExit: bye"
    assert "hello from a plugin" in out.stderr and "registering" in out.stderr


def test_a_raising_supports_or_property_names_the_distribution(reg):
    from udm.plugin_report import build_report

    class Touchy(udm.GaussianNoise, udm.Corruption):
        name = "touchy"

        def forward(self, x0, eps, t):
            return x0

        def sample_prior(self, shape, generator, *, device=None, dtype=None):
            return torch.zeros(shape)

        @property
        def posterior(self):
            raise RuntimeError("property bug")

    def bad_supports(corruption):
        raise ValueError("supports bug")

    plugin = types.ModuleType("touchy")

    @udm.hookimpl
    def udm_register_corruptions(register):
        register(Touchy)

    @udm.hookimpl
    def udm_register_samplers(register):
        register(udm.SamplerSpec("picky", udm.samplers.invert))

    plugin.udm_register_corruptions, plugin.udm_register_samplers = udm_register_corruptions, udm_register_samplers
    r = udm.load_registry()
    r.add_plugin(plugin, name="touchy", distribution="udm-touchy", version="2.0")
    report = {c.name: c for c in build_report(r).corruptions}  # does not raise: `udm plugins` keeps working
    assert "capabilities could not be read (RuntimeError: property bug); the fault is in udm-touchy" \
        in report["touchy"].note
    object.__setattr__(r.get("sampler", "picky"), "supports", bad_supports)
    with pytest.raises(udm.PluginError, match=r"sampler 'picky': supports\(corruption 'gaussian'\) must answer; got "
                                              r"ValueError: supports bug\. The fault is in udm-touchy 2\.0 \(entry point "
                                              r"'touchy'\) or udm 0\.1\.0"):
        udm.supported_samplers(r.create("corruption", "gaussian"), r)
    assert "must answer" in {c.name: c for c in build_report(r).corruptions}["gaussian"].note
