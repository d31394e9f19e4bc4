"""The built-in ``unet`` model: a small time-conditioned U-Net for images ``(batch, C, H, W)``.

DDPM-style (Ho et al. 2020, appendix B) but small enough to train on a CPU in minutes: residual blocks
(GroupNorm, SiLU, 3x3 conv) whose time embedding is added between the two convolutions, strided-conv
downsampling, nearest-neighbour upsampling, skip connections by concatenation, and one optional
self-attention block at the lowest resolution. The time input is the time type's encoding (t * 1000)
and goes through a sinusoidal embedding (Vaswani et al. 2017) and a two-layer MLP.
"""

from __future__ import annotations

import torch
from einops import rearrange
from torch import nn
from torch.nn import functional as F

import udm
from udm.errors import ConfigError


def _norm(ch: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, ch), ch)


class _ResBlock(nn.Module):
    def __init__(self, cin: int, cout: int, temb: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = _norm(cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.temb = nn.Linear(temb, cout)
        self.norm2, self.conv2 = _norm(cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.drop = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + rearrange(self.temb(emb), "b c -> b c 1 1")
        h = self.conv2(self.drop(F.silu(self.norm2(h))))
        return self.skip(x) + h


class _Attention(nn.Module):
    def __init__(self, ch: int, heads: int = 4) -> None:
        super().__init__()
        self.norm = _norm(ch)
        self.attn = nn.MultiheadAttention(ch, heads if ch % heads == 0 else 1, batch_first=True)

    def forward(self, x, emb=None):
        seq = rearrange(self.norm(x), "b c h w -> b (h w) c")
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + rearrange(out, "b (h w) c -> b c h w", h=x.shape[2])


class UNet(nn.Module):
    """x_t ``(batch, C, H, W)`` and time encoding ``(batch,)`` -> output ``(batch, C, H, W)``.

    Args:
        data_shape: ``[C, H, W]``; H and W must be divisible by 2^(len(channel_mult) - 1).
        channels: base width; channel_mult: width multiplier per resolution level.
        blocks: residual blocks per level; attention: self-attention at the lowest resolution.
        time_dim: sinusoidal embedding size; dropout: inside residual blocks.
        mask_fill: if set, the input gets one extra channel, 1 where every channel of x_t equals
            ``mask_fill`` (the masked pixels of the ``mask_pixels`` corruption with ``fill=mask_fill``).
    """

    name = "unet"

    def __init__(self, data_shape: tuple[int, ...] | list[int] = (1, 8, 8), channels: int = 32,
                 channel_mult: tuple[int, ...] | list[int] = (1, 2, 2), blocks: int = 1, attention: bool = True,
                 time_dim: int = 64, dropout: float = 0.0, mask_fill: float | None = None) -> None:
        super().__init__()
        shape = tuple(int(d) for d in data_shape)
        levels = len(channel_mult)
        if len(shape) != 3 or min(shape) < 1:
            raise ConfigError(f"model unet: data_shape must be [channels, height, width]; got {list(shape)}.")
        if levels < 1 or shape[1] % 2 ** (levels - 1) or shape[2] % 2 ** (levels - 1):
            raise ConfigError(f"model unet: height and width must be divisible by 2^(len(channel_mult) - 1) = "
                              f"{2 ** max(levels - 1, 0)}; got data_shape {list(shape)} with channel_mult "
                              f"{list(channel_mult)}. Shorten channel_mult or pad the images.")
        self.data_shape, self.time_dim = shape, time_dim
        self.mask_fill = None if mask_fill is None else float(mask_fill)
        temb = 4 * channels
        self.time_mlp = nn.Sequential(nn.Linear(time_dim, temb), nn.SiLU(), nn.Linear(temb, temb))
        self.inp = nn.Conv2d(shape[0] + (mask_fill is not None), channels, 3, padding=1)
        widths, ch = [channels], channels
        self.down = nn.ModuleList()
        for i, mult in enumerate(channel_mult):
            for _ in range(blocks):
                self.down.append(_ResBlock(ch, channels * mult, temb, dropout))
                ch = channels * mult
                widths.append(ch)
            if i < levels - 1:
                self.down.append(nn.Conv2d(ch, ch, 3, stride=2, padding=1))
                widths.append(ch)
        self.mid = nn.ModuleList([_ResBlock(ch, ch, temb, dropout),
                                  _Attention(ch) if attention else nn.Identity(),
                                  _ResBlock(ch, ch, temb, dropout)])
        self.up = nn.ModuleList()
        for i, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(blocks + 1):
                self.up.append(_ResBlock(ch + widths.pop(), channels * mult, temb, dropout))
                ch = channels * mult
            if i > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
        self.out = nn.Sequential(_norm(ch), nn.SiLU(), nn.Conv2d(ch, shape[0], 3, padding=1))
        nn.init.zeros_(self.out[-1].weight)
        nn.init.zeros_(self.out[-1].bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if x.shape[1:] != self.data_shape:
            raise ConfigError(f"model unet: input must have shape (batch, {', '.join(map(str, self.data_shape))}); "
                              f"got {tuple(x.shape)}. Set data_shape to the data's per-example shape.")
        emb = self.time_mlp(udm.nn.timestep_embedding(t, self.time_dim).to(x.dtype))
        if self.mask_fill is not None:  # the model also receives the mask (mask_pixels corruption)
            x = torch.cat([x, (x == self.mask_fill).all(dim=1, keepdim=True).to(x.dtype)], dim=1)
        h = self.inp(x)
        skips = [h]
        for layer in self.down:
            h = layer(h, emb) if isinstance(layer, _ResBlock) else layer(h)
            skips.append(h)
        for layer in self.mid:
            h = layer(h, emb) if not isinstance(layer, nn.Identity) else h
        for layer in self.up:
            if isinstance(layer, _ResBlock):
                h = layer(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = layer(h)
        return self.out(h)


@udm.hookimpl
def udm_register_models(register):
    register(UNet)
