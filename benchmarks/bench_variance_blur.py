"""Per-frequency optimal variance for blurring diffusion on 8x8 digits (docs/howto-variance.md).

Trains the small U-Net of examples/blur_digits.py on a ``blur`` corruption with noise (``blurring``: VP noise to
pure noise, Hoogeboom & Salimans 2023; ``heat``: the plugin's defaults, small noise), fits the analytic variance on
the 20-step sampling grid twice, one value per time (scalar) and one per DCT frequency, and samples with ``ddpm``
(the per-frequency DDPM posterior, refresh eta = 1) with q_theta's mean (plain), the scalar and the per-frequency
variance, and with ``ddim`` likewise. Reports the Fréchet distance in pixel space to held-out digits
(``frechet_pixels``; lower is better) with x0_hat clamped to [-1, 1] (as the example samples) and without, and
writes a grid of samples (first row: held-out digits).

    python benchmarks/bench_variance_blur.py --minutes 4 --out docs/img/blur_variance.png
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

import udm
from udm import _plots

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from blur_digits import CONFIGS, train  # noqa: E402  (the example's model and training loop)


def trained(reg, data, name: str, args):
    """(corruption, time type, EMA network) of a configuration: trained for ``args.minutes``, or read from
    ``args.cache``/``<name>.safetensors`` when an earlier run left it there."""
    path = Path(args.cache) / f"{name}.safetensors" if args.cache else None
    if path is None or not path.is_file():
        corruption, time_type, model = train(reg, data, CONFIGS[name], args.minutes, args.seed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            save_file({k: v.contiguous() for k, v in model.state_dict().items()}, path)
        return corruption, time_type, model
    corruption = reg.create("corruption", "blur", **CONFIGS[name])
    corruption.fit(data)
    model = reg.create("model", "unet", data_shape=[1, 8, 8], channels=16, channel_mult=[1, 2, 2], attention=False)
    model.load_state_dict(load_file(path))
    return corruption, reg.create("time", "continuous"), model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=4.0, help="training time per configuration")
    ap.add_argument("--configs", default="blurring,heat")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--n", type=int, default=500, help="samples per row")
    ap.add_argument("--samples", type=int, default=1000, help="training digits per time of the variance fits")
    ap.add_argument("--out", default="docs/img/blur_variance.png")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache", help="a folder for the trained networks: written after training, read if present")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", udm.UdmWarning)
    reg = udm.registry()
    digits = reg.create("dataset", "digits", seed=args.seed)
    train_set, held_out = digits[:1500], digits[1500:]
    fd = reg.get("metric", "frechet_pixels")
    print(f"floor: FD(train digits, held-out) = {fd(train_set[: args.n], held_out):.3f}\n")
    print("| config | sampler | variance | FD, x0_hat clamped | FD, not clamped |")
    print("|---|---|---|---|---|")
    rows, labels = [held_out[:12]], ["held-out"]
    for name in args.configs.split(","):
        corruption, time_type, model = trained(reg, train_set, name, args)
        fits = {}
        for per in (False, True):
            start = time.perf_counter()
            fits[per] = udm.fit_variance(model, corruption, time_type, train_set, steps=args.steps,
                                         samples=args.samples, per_coefficient=per,
                                         generator=torch.Generator().manual_seed(args.seed + 1))
            print(f"<!-- {name}: {'per-frequency' if per else 'scalar'} analytic fit "
                  f"{time.perf_counter() - start:.0f} s, Gamma_t > 1 at {len(fits[per].flagged)} times -->")
        for sampler in ("ddpm", "ddim"):
            for label, var in (("none (plain)", None), ("analytic, scalar", fits[False].table),
                               ("analytic, per frequency", fits[True].table)):
                scores = []
                for clamp in (True, False):
                    x = udm.sample(model, corruption, time_type, shape=(args.n, 1, 8, 8), sampler=sampler,
                                   steps=args.steps, generator=torch.Generator().manual_seed(2), clamp=clamp,
                                   variance=var)
                    scores.append(fd(x, held_out))
                    if clamp and sampler == "ddpm":
                        rows.append(x[:12])
                        labels.append(f"{name}, {label}")
                print(f"| {name} | {sampler} | {label} | {scores[0]:.3f} | {scores[1]:.3f} |", flush=True)
    caption = f"rows (ddpm, {args.steps} steps): " + "; ".join(labels[:4]) + ";\n" + "; ".join(labels[4:])
    _plots.save(_plots.image_grid_figure(torch.cat(rows), (-1, 1), caption, nrow=12), args.out)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
