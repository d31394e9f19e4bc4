"""The README's Python quickstart: train an MLP on two moons, sample with DDIM, score."""

import torch, udm

reg = udm.registry()                                           # installed plugins, via entry points
data = reg.create("dataset", "two_moons", n=20000, seed=0)
corruption = reg.create("corruption", "gaussian", schedule="cosine", prediction="v")
time = reg.create("time", "discrete", steps=1000)
net = reg.create("model", "mlp", data_shape=[2], width=128, depth=2)
run = udm.train(net, corruption, time, data, steps=1500, batch_size=256, lr=2e-3, ema=0.99, warmup=100)
x = udm.sample(run.ema, corruption, time, shape=(4000, 2), sampler="ddim", steps=50,
               generator=torch.Generator().manual_seed(0))
print(reg.get("metric", "sliced_wasserstein")(x, reg.create("dataset", "two_moons", n=4000, seed=1)))
