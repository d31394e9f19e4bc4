"""Bring your own model: a diffusers UNet2DModel saved with save_pretrained runs on udm's samplers
(``model: {name: diffusers, path: DIR}`` / ``udm.plugins.diffusers_model.from_diffusers``), and udm's ddim on
it equals diffusers' own DDIMPipeline on the same initial noise and timesteps; a user network that takes sigma
works through ``udm.nn.Adapter`` with ddim and heun."""

from __future__ import annotations

import math

import pytest
import torch

import udm
from udm.errors import ConfigError
from udm.testing import GaussianMixture

diffusers = pytest.importorskip("diffusers", reason="diffusers is a test extra: pip install -e '.[test]'")
from udm.plugins.diffusers_model import from_diffusers  # noqa: E402


def _pipeline(tmp_path, clip_sample: bool, prediction_type: str = "epsilon"):
    torch.manual_seed(0)
    unet = diffusers.UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                                 block_out_channels=(8, 16), down_block_types=("DownBlock2D", "DownBlock2D"),
                                 up_block_types=("UpBlock2D", "UpBlock2D"), norm_num_groups=4)
    sched = diffusers.DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=clip_sample,
                                    prediction_type=prediction_type)
    pipe = diffusers.DDIMPipeline(unet=unet, scheduler=sched)
    pipe.save_pretrained(tmp_path)
    return pipe


@pytest.mark.parametrize("clip", [False, True], ids=["plain", "clipped"])
def test_udm_ddim_on_a_saved_diffusers_model_equals_the_ddim_pipeline(tmp_path, clip):
    pipe = _pipeline(tmp_path, clip)
    steps, batch = 10, 3
    want = pipe(batch_size=batch, generator=torch.Generator().manual_seed(7), num_inference_steps=steps,
                output_type="pt", use_clipped_model_output=clip).images  # (image / 2 + 0.5).clamp(0, 1)
    model = from_diffusers(str(tmp_path))
    assert model.corruption.prediction == "eps" and model.time_type.steps == 1000
    x_init = torch.randn((batch, 1, 8, 8), generator=torch.Generator().manual_seed(7))  # the pipeline's own draw
    pipe.scheduler.set_timesteps(steps)
    # the same timesteps: diffusers' index k is udm's n = k + 1, then the last step lands on t = 0 (x0_hat)
    times = torch.tensor([(int(k) + 1) / 1000 for k in pipe.scheduler.timesteps] + [0.0], dtype=torch.float64)
    den = udm.Denoiser(model.network, model.corruption, model.time_type)
    x = udm.samplers.invert(den, model.corruption, times, x_init, clamp=clip)
    got = (x / 2 + 0.5).clamp(0, 1)
    assert float((got - want).abs().max()) < 1e-5


def test_the_diffusers_model_in_yaml_checks_the_corruption_against_its_scheduler(tmp_path, monkeypatch):
    _pipeline(tmp_path / "unet_pipe", False, "v_prediction")
    reg = udm.registry()
    net = reg.create("model", "diffusers", path=str(tmp_path / "unet_pipe"))
    assert net.udm_expects == {"prediction": "v", "time_steps": 1000}
    corr = reg.create("corruption", "gaussian", schedule={"name": "table", "config": net.config_path}, prediction="eps")
    time = reg.create("time", "discrete", steps=1000)
    with pytest.raises(ConfigError, match=r"udm.sample: the corruption's prediction must be what model 'diffusers' "
                                          r"outputs, 'v'; got 'eps'\. Set corruption\.prediction: v\."):
        udm.sample(net, corr, time, shape=(2, 1, 8, 8), steps=2)
    corr_v = reg.create("corruption", "gaussian", schedule={"name": "table", "config": net.config_path},
                        prediction="v")
    with pytest.raises(ConfigError, match=r"the time type must be discrete with the steps model 'diffusers' was "
                                          r"trained on, 1000; got .*Use time: \{name: discrete, steps: 1000\}"):
        udm.sample(net, corr_v, reg.create("time", "continuous"), shape=(2, 1, 8, 8), steps=2)
    assert udm.sample(net, corr_v, time, shape=(2, 1, 8, 8), steps=2).shape == (2, 1, 8, 8)
    with pytest.raises(ConfigError, match=r"model diffusers: path must be a folder written by save_pretrained; "
                                          r"got '.*nowhere'"):
        reg.create("model", "diffusers", path=str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match=r"model diffusers: the data's shape must be the UNet's"):
        reg.create("model", "diffusers", path=str(tmp_path / "unet_pipe"), data_shape=[3, 8, 8])


class SigmaNet(torch.nn.Module):
    """A network that takes sigma (EDM / k-diffusion style) and predicts eps: the exact denoiser of data
    N(0, v I) under a VP schedule, eps = sigma x / (alpha^2 v + sigma^2)."""

    def __init__(self, v: float) -> None:
        super().__init__()
        self.v = v

    def forward(self, x, *, sigma):
        s = sigma.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        alpha2 = 1 - s * s
        return s * x / (alpha2 * self.v + s * s)


@pytest.mark.parametrize("sampler", ["ddim", "heun"])
def test_a_network_that_takes_sigma_works_through_the_adapter(sampler):
    reg = udm.registry()
    corr = reg.create("corruption", "gaussian", schedule="linear", prediction="eps")
    base = reg.create("time", "continuous")
    time = udm.NoiseLevelTime(base, corr, "sigma")
    v = 0.25
    net = udm.nn.Adapter(SigmaNet(v), call=lambda m, x, sigma: m(x, sigma=sigma))
    g = torch.Generator().manual_seed(0)
    x = udm.sample(net, corr, time, shape=(2000, 2), sampler=sampler, steps=50, generator=g, dtype=torch.float64)
    # the exact posterior mean of N(0, v I) computed from t (udm.testing's oracle), on the same grid and noise:
    # the network fed sigma through the adapter gives the same samples, so sigma reached it correctly
    oracle = GaussianMixture(torch.zeros(1, 2), torch.full((1,), math.sqrt(v)), torch.ones(1)).denoiser(corr)
    ref = udm.sample(oracle, corr, base, shape=(2000, 2), sampler=sampler, steps=50,
                     generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float((x - ref).abs().max()) < 1e-8
    # a wrong input (the encoded time instead of sigma) is far off: the comparison has power
    wrong = udm.nn.Adapter(SigmaNet(v), call=lambda m, x, tau: m(x, sigma=tau / 1000))
    y = udm.sample(wrong, corr, base, shape=(2000, 2), sampler=sampler, steps=50,
                   generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    assert float((y - ref).abs().max()) > 1e-2


def test_the_adapter_reads_dataclass_and_tuple_outputs():
    class Out:
        def __init__(self, t):
            self.sample = t

    x, t = torch.ones(2, 3), torch.zeros(2)
    assert torch.equal(udm.nn.Adapter(torch.nn.Identity(), call=lambda m, a, b: Out(a))(x, t), x)
    assert torch.equal(udm.nn.Adapter(torch.nn.Identity(), call=lambda m, a, b: (a, b))(x, t), x)
    assert torch.equal(udm.nn.Adapter(torch.nn.Identity(), call=lambda m, a, b: a, time=lambda n: n - 1)(x, t), x)
    with pytest.raises(ConfigError, match=r"udm.nn.Adapter: the module's output must be a tensor, a tuple or have "
                                          r"\.sample; got dict\. Pass output="):
        udm.nn.Adapter(torch.nn.Identity(), call=lambda m, a, b: {"eps": a})(x, t)
