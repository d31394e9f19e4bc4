"""Latent diffusion of tokens (a learned embedding + Gaussian noise) against masked diffusion, on token data with a
known law: sequences from a first-order Markov chain (udm.testing.MarkovChain; its entropy and the exact TV of a
sample to it are computable).

Both corruptions train the same Transformer (width, depth, heads; continuous inputs and outputs for the latents)
for the same number of steps and sample with the same number of steps. Reported (issue 14, "what must hold"):

* TV of n samples to the true law, latent (ddpm, ddim) and mask (invert), against the noise floor of n true draws;
* the latent bound on -log p(x_0) (nats per sequence, ``LatentCorruption.nelbo``) against the entropy H(X), and
  the masked-diffusion bound (its ELBO loss times the length) on the same held-out sequences;
* rounding accuracy round(x0_hat(z_t)) == x_0 as t -> 0;
* the embedding norms over training (mean, min, max of |e_v|, and the smallest distance between two embeddings);
* the same for a frozen (random, never trained) embedding.

Run: python benchmarks/latent_vs_mask.py [--steps 3000] [--json results.json]  (about 4 CPU minutes per model)
Results on the shared 2-core CPU: benchmarks/results_latent_cpu.md.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import torch

import udm
from udm.testing import MarkovChain


def entropy(chain: MarkovChain) -> float:
    p = chain.probs()
    return float(-(p[p > 0] * p[p > 0].log()).sum())


def embedding_stats(corruption) -> dict[str, float]:
    e = corruption.encoder.table().detach()
    norms = e.norm(dim=-1)
    dist = torch.cdist(e, e) + torch.eye(len(e)) * 1e9
    return {"mean": float(norms.mean()), "min": float(norms.min()), "max": float(norms.max()),
            "min_distance": float(dist.min())}


def train(net, corruption, time_type, data, args, record=None):
    trainer = udm.Trainer(net, corruption, time_type, lr=args.lr, ema=args.ema, warmup=200, seed=args.seed)
    curve, start = [], time.perf_counter()
    for done in range(0, args.steps, args.log_every):
        out = trainer.fit(data, steps=min(args.log_every, args.steps - done), batch_size=args.batch)
        row = {"step": trainer.step, "loss": sum(out.losses) / len(out.losses)}
        if record is not None:
            row.update(record())
        curve.append(row)
    return trainer, curve, time.perf_counter() - start


def mask_bound(net, corruption, time_type, x0, draws: int = 16) -> tuple[float, float]:
    """The masked-diffusion ELBO (the MDLM loss, nats per position, times the length), per sequence: mean, s.e."""
    per = torch.stack([udm.diffusion_loss(net, corruption, time_type, x0, torch.Generator().manual_seed(100 + k))
                       .per_sample for k in range(draws)]).mean(0) * x0.shape[1]
    return float(per.mean()), float(per.std() / math.sqrt(len(per)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--ema", type=float, default=0.995)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--dim", type=int, default=16, help="embedding dimension of the latent corruption")
    ap.add_argument("--samples", type=int, default=10000)
    ap.add_argument("--sample-steps", type=int, nargs="+", default=[20, 100])
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--only", choices=["mask", "joint", "frozen"], nargs="+", default=["mask", "joint", "frozen"])
    ap.add_argument("--loss", choices=["elbo", "simple", "cross_entropy"], default="elbo",
                    help="the latent corruption's loss")
    ap.add_argument("--prediction", choices=["x0", "eps", "v", "logits"], default="v",
                    help="the inner corruption's target, or logits: the latent corruption's logits head")
    ap.add_argument("--normalize", action="store_true", help="fixed-norm embeddings (CDCD)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    reg = udm.registry()
    chain = MarkovChain.random(vocab=6, length=5, sharpness=2.5, seed=0)
    V, L = chain.vocab_size, chain.length
    data = chain.sample(50000, torch.Generator().manual_seed(args.seed))
    held_out = chain.sample(2000, torch.Generator().manual_seed(args.seed + 1))
    floor = chain.tv_floor(args.samples)
    results = {"entropy": entropy(chain), "tv_floor": floor, "states": V**L, "args": vars(args)}
    print(f"Markov chain V={V}, L={L}: H = {results['entropy']:.4f} nats per sequence; TV floor of {args.samples} "
          f"true draws {floor[0]:.4f} +- {floor[1]:.4f}")

    def transformer(**kw):
        torch.manual_seed(args.seed)
        return reg.create("model", "transformer", vocab_size=V, max_length=L, width=args.width, depth=args.depth,
                          heads=4, **kw)

    def tv_of(net, corruption, time_type, sampler, steps):
        x = udm.sample(net, corruption, time_type, shape=(args.samples, L), sampler=sampler, steps=steps,
                       generator=torch.Generator().manual_seed(args.seed + 7))
        return chain.tv(x)

    if "mask" in args.only:
        mask, time_type = reg.create("corruption", "mask", vocab_size=V), reg.create("time", "continuous")
        net = transformer()
        trainer, curve, seconds = train(net, mask, time_type, data, args)
        ema = trainer.ema.eval()
        res = {"seconds": seconds, "curve": curve, "bound": mask_bound(ema, mask, time_type, held_out),
               "tv": {f"invert-{s}": tv_of(ema, mask, time_type, "invert", s) for s in args.sample_steps}}
        results["mask"] = res
        print(f"mask: {seconds:.0f} s; bound {res['bound'][0]:.4f} +- {res['bound'][1]:.4f} nats; TV {res['tv']}")

    for mode in ("joint", "frozen"):
        if mode not in args.only:
            continue
        logits = args.prediction == "logits"
        latent = reg.create("corruption", "latent", mode=mode, loss=args.loss, prediction="logits" if logits else "inner",
                            encoder={"name": "embedding", "vocab_size": V, "dim": args.dim, "seed": args.seed,
                                     "normalize": args.normalize},
                            inner={"name": "gaussian", "schedule": "linear",
                                   **({} if logits else {"prediction": args.prediction})})
        time_type = reg.create("time", "continuous", t_min=latent.recon_time)
        net = transformer(input_dim=args.dim, logits=logits)
        trainer, curve, seconds = train(net, latent, time_type, data, args, record=lambda: embedding_stats(latent))
        den = udm.Denoiser(trainer.ema.eval(), latent, time_type)
        bound = latent.nelbo(den, held_out, torch.Generator().manual_seed(3), times=16)
        total = bound.total
        acc = {t: latent.rounding_accuracy(den, held_out, t, torch.Generator().manual_seed(4))
               for t in (1e-3, 0.01, 0.05, 0.1, 0.2, 0.3, 0.5)}
        tvs = {f"{s_}-{n}": tv_of(trainer.ema, latent, time_type, s_, n) for s_ in ("ddpm", "ddim")
               for n in args.sample_steps}
        res = {"seconds": seconds, "curve": curve,
               "bound": (float(total.mean()), float(total.std() / math.sqrt(len(total)))),
               "bound_terms": {"reconstruction": float(bound.reconstruction.mean()),
                               "diffusion": float(bound.diffusion.mean()), "prior": float(bound.prior.mean())},
               "rounding_accuracy": acc, "tv": tvs, "embedding": embedding_stats(latent)}
        results[f"latent-{mode}"] = res
        print(f"latent ({mode}): {seconds:.0f} s; bound {res['bound'][0]:.4f} +- {res['bound'][1]:.4f} nats "
              f"({res['bound_terms']}); rounding accuracy {acc}; TV {tvs}; embeddings {res['embedding']}")
        print("  embedding norms over training (step: mean / min / max, min distance): " + "; ".join(
            f"{r['step']}: {r['mean']:.2f} / {r['min']:.2f} / {r['max']:.2f}, {r['min_distance']:.2f}" for r in curve))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1, default=float)


if __name__ == "__main__":
    main()
