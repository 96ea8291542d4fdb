"""VAEs side by side: PyTorch's example VAE, trained the straightforward way, vs ours.

    python benchmarks/vae.py                   # MNIST-5k 20 epochs (+ Fashion-MNIST 5 epochs if installed)
    python benchmarks/vae.py --quick           # a smoke check (numbers not meaningful)
    python benchmarks/vae.py --epochs 50 --threads 1

Three runs on the same data (images in [0, 1], test split held out), each for the same epochs:
  reference  -- the 784-400-20 VAE of PyTorch's examples/vae/main.py as that script trains it:
                fc1/fc21/fc22/fc3/fc4 with ReLU, a sigmoid decoder scored by F.binary_cross_entropy
                (summed) + the KL, Adam(1e-3) (torch's default for-loop implementation), batch 128, a
                shuffling DataLoader whose dataset converts each uint8 image to a float tensor as
                ToTensor does, and `train_loss += loss.item()` every batch. Re-implemented here from
                its description (torchvision is not available here).
  ours, mlp  -- the same network as `aigc_lib.vae.VAE(kind="mlp")` trained by `vae.train_vae`
                (the course's `fit` loop: data already a float tensor on the device, seeded epoch
                permutations, BCE from logits, torch's fused Adam kernel, no per-step host sync).
  ours, conv -- `VAE(kind="conv")`, same loop and recipe.
After every epoch: the test negative ELBO (one z per image, nats per image) of each, with
`vae.evaluate_nelbo` (the reference's weights are copied into `VAE(kind="mlp")`, the same
network, and scored by the same function). Throughput: training images/s of one epoch of each
path from a fresh model, timed in interleaved repeats (medians), FLOPs per training step counted with
torch.utils.flop_counter.FlopCounterMode, and the share of the CPU's fp32 matmul peak measured in the same run.

Targets (issue): ours (conv) has a lower test NELBO than the reference at equal epochs, and our
training path is >= 1.5x the images/s of the straightforward reference implementation (same model).
Fashion-MNIST runs when /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist) exists.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F
from common import matmul_gflops
from torch import nn
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from aigc_lib import data, vae

BATCH = 128
LR = 1e-3


class ExampleVAE(nn.Module):
    """PyTorch examples/vae/main.py's model, layer for layer."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)

    def encode(self, x):
        h1 = F.relu(self.fc1(x.view(-1, 784)))
        return self.fc21(h1), self.fc22(h1)

    def decode_logits(self, z):
        return self.fc4(F.relu(self.fc3(z)))

    def forward(self, x):
        mu, logvar = self.encode(x)
        std = torch.exp(0.5 * logvar)
        z = mu + torch.randn_like(std) * std
        return torch.sigmoid(self.decode_logits(z)), mu, logvar


def example_loss(recon_x, x, mu, logvar):
    bce = F.binary_cross_entropy(recon_x, x.view(-1, 784), reduction="sum")
    kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())
    return bce + kld


def as_library_vae(model: ExampleVAE) -> vae.VAE:
    """The example's weights in a `vae.VAE(kind="mlp")` (the same network), to score it with `evaluate_nelbo`."""
    ours = vae.VAE(vae.VAEConfig(kind="mlp"))
    pairs = [
        (ours.encoder[1], model.fc1),
        (ours.to_mu, model.fc21),
        (ours.to_logvar, model.fc22),
        (ours.decoder[0], model.fc3),
        (ours.decoder[2], model.fc4),
    ]
    with torch.no_grad():
        for mine, theirs in pairs:
            mine.weight.copy_(theirs.weight), mine.bias.copy_(theirs.bias)
    return ours


class ToTensorDataset(Dataset):
    """What the example's `datasets.MNIST(transform=transforms.ToTensor())` does per sample: uint8 (28, 28)
    -> float (1, 28, 28) / 255 (without the PIL round trip)."""

    def __init__(self, images: torch.Tensor):
        self.raw = (images * 255).round().to(torch.uint8).squeeze(1).numpy()  # as the dataset stores them

    def __len__(self) -> int:
        return len(self.raw)

    def __getitem__(self, i: int) -> tuple[torch.Tensor]:
        return (torch.from_numpy(self.raw[i]).float().div(255).unsqueeze(0),)


def reference_epoch(model: ExampleVAE, optimizer, loader: DataLoader) -> float:
    model.train()
    train_loss = 0.0
    for (x,) in loader:
        optimizer.zero_grad()
        recon, mu, logvar = model(x)
        loss = example_loss(recon, x, mu, logvar)
        loss.backward()
        train_loss += loss.item()
        optimizer.step()
    return train_loss / len(loader.dataset)


def flops_per_step(step) -> int:
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def run_dataset(name: str, train: torch.Tensor, test: torch.Tensor, epochs: int, seed: int, repeats: int) -> dict:
    steps_per_epoch = len(train) // BATCH
    print(
        f"\n== {name}: {len(train):,} train / {len(test):,} test images, {epochs} epochs of {steps_per_epoch} steps "
        f"(batch {BATCH}, Adam {LR:g})"
    )
    # reference: the example's loop
    torch.manual_seed(seed)
    ref = ExampleVAE()
    opt = torch.optim.Adam(ref.parameters(), lr=LR)
    loader = DataLoader(ToTensorDataset(train), batch_size=BATCH, shuffle=True, drop_last=True)
    ours = {}
    for kind in ("mlp", "conv"):
        torch.manual_seed(seed)
        ours[kind] = vae.VAE(vae.VAEConfig(kind=kind))
    curves = {"reference": [], "ours, mlp": [], "ours, conv": []}
    for epoch in range(1, epochs + 1):
        reference_epoch(ref, opt, loader)
        curves["reference"].append(vae.evaluate_nelbo(as_library_vae(ref), test)["nelbo"])
        for kind, model in ours.items():
            # `fit` resumes from the checkpoint: one more epoch per call, exactly as one long run
            vae.train_vae(
                model,
                train,
                epoch * steps_per_epoch,
                seed=seed,
                progress=False,
                checkpoint=f"{CKPT_DIR}/{name}_{kind}.pt",
                log_every=steps_per_epoch,
            )
            curves[f"ours, {kind}"].append(vae.evaluate_nelbo(model, test)["nelbo"])
        print(
            f"   epoch {epoch:3d}: test -ELBO  " + "  ".join(f"{k} {v[-1]:7.2f}" for k, v in curves.items()), flush=True
        )
    x = train[:BATCH]
    flops = {
        "reference": flops_per_step(lambda: _ref_step(ref, x)),
        "ours, mlp": flops_per_step(lambda: vae.elbo_terms(ours["mlp"], x)["loss"].backward()),
        "ours, conv": flops_per_step(lambda: vae.elbo_terms(ours["conv"], x)["loss"].backward()),
    }
    return {
        "curves": curves,
        "img_s": throughput(train, repeats, seed),
        "flops_per_image": {k: f / BATCH for k, f in flops.items()},
    }


def throughput(train: torch.Tensor, repeats: int, seed: int) -> dict[str, float]:
    """Training images/s of one epoch of each path from a fresh model, in interleaved repeats (medians)."""
    steps = len(train) // BATCH
    loader = DataLoader(ToTensorDataset(train), batch_size=BATCH, shuffle=True, drop_last=True)

    def reference() -> None:
        model = ExampleVAE()
        reference_epoch(model, torch.optim.Adam(model.parameters(), lr=LR), loader)

    def ours(kind: str):
        return lambda: vae.train_vae(vae.VAE(vae.VAEConfig(kind=kind)), train, steps, seed=seed, progress=False)

    runs = {"reference": reference, "ours, mlp": ours("mlp"), "ours, conv": ours("conv")}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {k: steps * BATCH / statistics.median(v) for k, v in times.items()}


def _ref_step(model: ExampleVAE, x: torch.Tensor) -> None:
    recon, mu, logvar = model(x)
    example_loss(recon, x, mu, logvar).backward()


CKPT_DIR = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"aigc_vae_bench_{os.getpid()}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=20, help="epochs on MNIST-5k")
    p.add_argument("--fashion-epochs", type=int, default=5, help="epochs on Fashion-MNIST (60k images; 0: skip)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats of one epoch per path")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if os.getloadavg()[0] > 0.5 * (os.cpu_count() or 1):
        print(f"WARNING: load average {os.getloadavg()[0]:.1f}: other work competes for the CPU; timings are noisy")
    epochs = 2 if args.quick else args.epochs
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, cpu")
    sets = {"MNIST-5k": (data.mnist5k("train").images, data.mnist5k("test").images)}
    n_epochs = {"MNIST-5k": epochs}
    if args.fashion_epochs and not args.quick:
        try:
            fm_train, fm_test = data.fashion_mnist("train"), data.fashion_mnist("test")
            sets["Fashion-MNIST"] = (fm_train.images, fm_test.images)
            n_epochs["Fashion-MNIST"] = args.fashion_epochs
        except data.DataSourceMissing as err:
            print(f"(Fashion-MNIST skipped: {err})")
    if args.quick:
        sets = {k: (tr[:1024], te[:256]) for k, (tr, te) in sets.items()}
    os.makedirs(CKPT_DIR, exist_ok=True)
    repeats = 2 if args.quick else args.repeats
    results = {name: run_dataset(name, tr, te, n_epochs[name], args.seed, repeats) for name, (tr, te) in sets.items()}
    peak = statistics.median(matmul_gflops() for _ in range(5))

    print("\n" + "=" * 100 + "\nSUMMARY" + ("  (--quick: numbers NOT meaningful)" if args.quick else ""))
    print(f"  fp32 matmul peak: {peak:.0f} GFLOP/s")
    for name, r in results.items():
        print(f"  {name}: test -ELBO (nats/image) after {n_epochs[name]} epochs, training images/s, share of peak")
        for k in r["curves"]:
            gflops = r["img_s"][k] * r["flops_per_image"][k] / 1e9
            print(
                f"    {k:<11} -ELBO {r['curves'][k][-1]:8.2f}   {r['img_s'][k]:9,.0f} img/s   "
                f"{r['flops_per_image'][k] / 1e6:6.2f} MFLOP/img   {gflops:6.1f} GFLOP/s = {gflops / peak:5.1%}"
            )
        c, ref = r["curves"], r["curves"]["reference"]
        ahead = [e for e in range(len(ref)) if all(a < b for a, b in zip(c["ours, conv"][e:], ref[e:], strict=True))]
        since = f"ahead at every epoch from epoch {ahead[0] + 1} on" if ahead else "never ahead to the end"
        print(
            f"    target: conv VAE lower test -ELBO than the reference after {len(ref)} epochs: "
            f"{'MET' if c['ours, conv'][-1] < ref[-1] else 'NOT MET'} (final {c['ours, conv'][-1]:.2f} vs "
            f"{ref[-1]:.2f}; {since})"
        )
        speed = r["img_s"]["ours, mlp"] / r["img_s"]["reference"]
        print(
            f"    target: our training path >= 1.5x the reference's images/s (same model): {speed:.2f}x "
            f"{'MET' if speed >= 1.5 else 'NOT MET'}"
        )
    print("=" * 100)


if __name__ == "__main__":
    main()
