"""Data parallelism (aigc_lib.distributed + training.fit under a process group): real processes joined by
gloo on the CPU, one thread each, and a real torchrun. N ranks with the global batch must reproduce one
process (to float rounding), hold identical weights, let rank 0 alone write the checkpoint and resume
exactly."""

import importlib.util
import math
import os
import random
import subprocess
import sys
import time
import types
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aigc_lib import distributed, recipes, training
from aigc_lib import transformer as tr
from aigc_lib.__main__ import main
from aigc_lib.captions import captioned_digits
from aigc_lib.data import ImageData, mnist5k
from aigc_lib.paths import ROOT
from aigc_lib.recipes import ch04, ch07

TINY_GPT = {"n_layer": 1, "n_embd": 16, "block_size": 16, "batch": 8, "steps": 6}
TINY_UNET = {"base": 8, "steps": 4, "batch_size": 8}


def tiny_text() -> torch.Tensor:
    return ch04.shakespeare_ids()[:20_000]


def tiny_digits() -> ImageData:
    train = mnist5k("train")
    return ImageData(train.images[:64], train.labels[:64])


def assert_same_weights(a: dict, b: dict, atol: float = 1e-5) -> None:
    assert a.keys() == b.keys()
    worst = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    assert worst <= atol, f"largest weight difference {worst:.3g}"


# --- one process: the launcher's environment, sharding ----------------------------------------------


def test_launch_context_reads_torchrun_and_falls_back_to_one_process():
    assert distributed.launch_context({}) == distributed.Context()
    ctx = distributed.launch_context({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main, ctx.distributed) == (3, 4, 1, False, True)
    with pytest.raises(ValueError, match="missing"):
        distributed.launch_context({"RANK": "0"})
    with pytest.raises(ValueError, match="RANK < WORLD_SIZE"):
        distributed.launch_context({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})
    assert distributed.backend_for("cpu") == "gloo" and distributed.backend_for("cuda") == "nccl"
    assert distributed.context().world_size == 1  # no group in this process


def test_shard_gives_each_rank_its_slice_of_every_tensor():
    batch = {"x": torch.arange(12).view(6, 2), "pair": (torch.arange(6), 7), "scalar": torch.tensor(1.0)}
    parts = [distributed.shard(batch, r, 3) for r in range(3)]
    assert torch.equal(torch.cat([p["x"] for p in parts]), batch["x"])
    assert torch.equal(parts[1]["pair"][0], torch.tensor([2, 3])) and parts[1]["pair"][1] == 7
    assert parts[2]["scalar"] is batch["scalar"]
    with pytest.raises(ValueError, match="multiple of 4"):
        distributed.shard(batch, 0, 4)


def test_train_command_lists_the_recipes_and_names_those_it_cannot_train(capsys):
    assert main(["train"]) == 0
    assert "04.char_gpt" in capsys.readouterr().out
    assert main(["train", "07.latent_unet"]) == 2
    err = capsys.readouterr().err
    assert "another recipe's model" in err and "05.unet" in err


# --- two processes -------------------------------------------------------------------------------------


class _UnusedHead(nn.Module):
    """A model with a head the loss never uses (as WaveNet's last residual convolution): DDP must cope."""

    def __init__(self):
        super().__init__()
        self.body, self.head, self.unused = nn.Linear(6, 8), nn.Linear(8, 1), nn.Linear(8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.body(x)))


def _sgd_steps(ranks=None, device="cpu") -> tuple[dict, list]:
    """Two steps of plain SGD (lr 1) through fit on a fixed batch of 8: the weights move by exactly the
    gradients of the batch's mean loss, so ranks that summed their gradients instead of averaging them
    would move twice as far (Adam, nearly blind to the gradient's scale, would hide that)."""
    torch.manual_seed(0)
    model = _UnusedHead()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(8, 6, generator=g), torch.randn(8, 1, generator=g)
    history = training.fit(model, torch.optim.SGD(model.parameters(), lr=1.0), lambda step: (x, y),
                           lambda m, b: F.mse_loss(m(b[0]), b[1]), 2, grad_clip=math.inf, progress=False)  # fmt: skip
    return {k: before[k] - v for k, v in model.state_dict().items()}, history["grad_norm"]


def _equivalence_worker(ranks, device, text, digits):
    gpt = recipes.train_replica(ranks, device, "04.char_gpt", TINY_GPT, text, {"progress": False, "log_every": 2})
    unet = recipes.train_replica(ranks, device, "05.unet", TINY_UNET, digits, {"progress": False})
    return gpt, unet, _sgd_steps()


def test_two_ranks_with_the_global_batch_equal_one_process_and_each_other():
    text, digits = tiny_text(), tiny_digits()
    (gpt0, unet0, sgd0), (gpt1, unet1, sgd1) = distributed.run_local(_equivalence_worker, 2, text, digits)
    # the ranks' weights are bit for bit the same: DDP averaged the gradients, the steps are identical
    for a, b in ((gpt0[0], gpt1[0]), (unet0[0], unet1[0]), (sgd0[0], sgd1[0])):
        assert all(torch.equal(a[k], b[k]) for k in a)
    # and equal to one process that trains on the whole batch (each rank had half of it)
    one_gpt = recipes.train_replica(distributed.Context(), "cpu", "04.char_gpt", TINY_GPT, text, {"progress": False})
    one_unet = recipes.train_replica(distributed.Context(), "cpu", "05.unet", TINY_UNET, digits, {"progress": False})
    assert_same_weights(gpt0[0], one_gpt[0])
    assert_same_weights(unet0[0], one_unet[0])
    # the logged loss is the mean over the ranks: the whole batch's loss
    assert gpt0[1].losses == pytest.approx(one_gpt[1].losses, rel=1e-5)
    assert gpt0[1].losses == gpt1[1].losses
    # the gradient itself, not only where Adam took the weights: its norm every step (before clipping) ...
    assert gpt0[1]["grad_norm"] == pytest.approx(one_gpt[1]["grad_norm"], rel=1e-4)
    assert unet0[1]["grad_norm"] == pytest.approx(one_unet[1]["grad_norm"], rel=1e-4)
    # ... and plain SGD's steps, which are the averaged gradients; the unused head gets none, as in one process
    one_sgd = _sgd_steps()
    assert sgd0[1] == pytest.approx(one_sgd[1], rel=1e-5)
    for k, step in one_sgd[0].items():
        torch.testing.assert_close(sgd0[0][k], step, rtol=1e-5, atol=1e-7, msg=lambda m, k=k: f"{k}: {m}")
    assert not sgd0[0]["unused.weight"].any() and sgd0[0]["body.weight"].abs().max() > 1e-3


def _draws(folder: str, name: str, steps: int) -> list[tuple[float, float]]:
    """A run whose loss draws from Python's and NumPy's global generators every step: what it drew."""
    random.seed(0), np.random.seed(0), torch.manual_seed(0)  # as aigc_lib.setup() seeds every process
    drawn = []

    def loss_fn(m, x):
        drawn.append((random.random(), float(np.random.rand())))
        return m(x).pow(2).mean()

    model = nn.Linear(2, 1)
    training.fit(model, torch.optim.SGD(model.parameters(), lr=0.1), lambda step: torch.ones(2, 2), loss_fn, steps,
                 ckpt_every=3, progress=False, checkpoint=f"{folder}/{name}")  # fmt: skip
    return drawn


def _resume_worker(ranks, device, text, folder):
    writes = []
    real_write = training._write
    training._write = lambda *args: (writes.append(args[1]), real_write(*args))[1]  # count this rank's writes
    config = tr.GPTConfig(vocab_size=ch04.VOCAB, block_size=16, n_layer=1, n_head=2, n_embd=16, dropout=0.2)

    def run(steps, name):
        torch.manual_seed(0)
        model = tr.GPT(config)
        tr.train_gpt(model, text, steps, batch_size=8, ckpt_every=3, progress=False, checkpoint=f"{folder}/{name}")
        return {k: v.clone() for k, v in model.state_dict().items()}

    whole = run(8, "whole.pt")
    run(5, "resumed.pt")  # stops at step 5 (checkpoints at 3 and 5) ...
    resumed = run(8, "resumed.pt")  # ... and a second run goes on from there
    training._write = real_write
    drawn = _draws(folder, "draws_whole.pt", 6)
    _draws(folder, "draws_resumed.pt", 3)
    drawn_after_resume = _draws(folder, "draws_resumed.pt", 6)
    return writes, whole, resumed, (drawn, drawn_after_resume)


def test_only_rank_0_writes_and_a_distributed_run_resumes_exactly(tmp_path):
    (writes0, whole0, resumed0, draws0), (writes1, whole1, _, draws1) = distributed.run_local(
        _resume_worker, 2, tiny_text(), str(tmp_path)
    )
    assert writes0 == [3, 6, 8, 3, 5, 6, 8] and writes1 == []
    # dropout draws from each rank's own stream; the checkpoint keeps both, so resuming is exact
    assert all(torch.equal(whole0[k], resumed0[k]) for k in whole0)
    assert all(torch.equal(whole0[k], whole1[k]) for k in whole0)
    state = torch.load(tmp_path / "whole.pt", weights_only=True)
    assert len(state["rank_rng"]) == 2
    assert not torch.equal(state["rank_rng"][0]["torch"], state["rank_rng"][1]["torch"])
    # Python's and NumPy's streams too: each rank goes on with its own after a resume, not rank 0's
    for whole, after_resume in (draws0, draws1):
        assert after_resume == whole[3:]
    assert draws0[0] != draws1[0]


def _refusal_worker(ranks, device):
    from aigc_lib import clip, gan

    config = gan.DCGANConfig(z_dim=8, ngf=8, ndf=8)
    try:
        gan.train_gan(gan.DCGANGenerator(config), gan.DCGANDiscriminator(config), torch.zeros(8, 1, 28, 28), 1)
        refused = ""
    except ValueError as err:
        refused = str(err)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        clip._check_ranks(64, 64)
    return refused, [str(w.message) for w in caught]


def test_trainers_whose_loss_couples_the_batch_refuse_or_warn():
    (refused, warned), (_, warned1) = distributed.run_local(_refusal_worker, 2)
    assert "train_gan: runs in one process only" in refused
    assert len(warned) == 1 and "group=32" in warned[0] and warned1 == []  # rank 0 warns


def test_torchrun_end_to_end_trains_a_recipe_like_one_process(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), "AIGC_BUDGET": "smoke"}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    command += ["-m", "aigc_lib", "train", "04.char_gpt", "--steps", "6", "--quiet", "--checkpoint", "ddp.pt"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("on 2 process(es)") == 1, done.stdout  # rank 0 alone reports
    state = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert state["step"] == 6 and len(state["rank_rng"]) == 2
    sizes = {**recipes.get("04.char_gpt").sizes_for("smoke"), "steps": 6}
    one, _ = recipes.train_replica(
        distributed.Context(), "cpu", "04.char_gpt", sizes, ch04.shakespeare_ids(), {"progress": False}
    )
    assert_same_weights(state["model"], one)


# --- every recipe the train command accepts, on two ranks ------------------------------------------------

# 2 steps each, at sizes small enough for CI; the U-Net's batch of 32 (16 per rank) is the one that makes the
# CPU's convolution hand DDP a 1×1 kernel's gradient in channels-last strides (a harmless, silenced warning)
TINY_RECIPES = {
    "02.dcgan": {"width": 8, "steps": 2},
    "03.conv_vae": {"epochs": 1},  # 256 images: 2 steps of 128
    "04.char_gpt": {"n_layer": 1, "n_embd": 16, "block_size": 16, "batch": 8, "steps": 2},
    "05.unet": {"base": 8, "steps": 2, "batch_size": 32},
    "06.clip": {"images": 64, "steps": 2, "batch": 16},
    "07.judge": {"images": 64, "steps": 2, "batch": 16},
    "07.autoencoder": {"images": 64, "steps": 2, "batch": 16},
    "08.fastspeech": {"steps": 2, "d_model": 32, "conv_hidden": 32, "kernel": 9, "batch": 8},
    "08.wavenet": {"steps": 2, "residual": 8, "skip": 8, "batch": 4, "crop": 600},
    "08.judge": {"per_voice": 3, "steps": 2, "batch": 8, "width": 16},
}
# as appendix A1's table says: N ranks reproduce one process (to rounding) for these
EXACT = {"04.char_gpt", "05.unet", "07.judge", "07.autoencoder", "08.wavenet", "08.judge"}
NOT_EQUIVALENT = {"06.clip", "08.fastspeech"}  # they warn; the VAE draws ε per rank (same distribution)


def tiny_speech() -> tuple:
    """Chapter 08's data, from the numbers 0-11 read in both languages (not the recipes' 2,000 utterances)."""
    from aigc_lib.speech import fastspeech as fs
    from aigc_lib.speech import teacher, tts

    by_lang = {lang: teacher.teacher_corpus(list(range(12)), lang, cache=None) for lang in teacher.LANGS}
    train = [u for us in by_lang.values() for u in us]
    vocab = fs.PhonemeVocab([p for u in train for p in u.phonemes])
    corpus = tts.NumberCorpus(train, {lang: [] for lang in by_lang}, {lang: [] for lang in by_lang}, vocab,
                              tts.tts_data(train, vocab))  # fmt: skip
    mels, frames = tts.padded_mels(tts.utterance_mels(train))  # 24 = 2 languages x 4 "voices" x per_voice 3
    return corpus, tts.wavenet_codes(train), (mels, frames, torch.tensor(list(range(12)) * 2))


def tiny_recipe_data() -> dict:
    digits = mnist5k("train")
    renders = captioned_digits("train", n=64)
    data = {
        "02.dcgan": ImageData(digits.images[:64], digits.labels[:64]),
        "03.conv_vae": ImageData(digits.images[:256], digits.labels[:256]),
        "04.char_gpt": tiny_text(),
        "05.unet": tiny_digits(),
        "06.clip": renders,
        "07.judge": ch07.judge_renders({"images": 64}),
        "07.autoencoder": renders,
    }
    if importlib.util.find_spec("espeakng_loader") is not None:
        data["08.fastspeech"], data["08.wavenet"], data["08.judge"] = tiny_speech()
    return data


def _every_recipe_worker(ranks, device, data):
    out = {}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, d in data.items():
            del caught[:]
            try:
                weights, history = recipes.train_replica(
                    ranks, device, name, TINY_RECIPES[name], d, {"progress": False}
                )
            except ValueError as err:
                out[name] = str(err)
                continue
            out[name] = (weights, history, [f"{w.category.__name__}: {w.message}" for w in caught])
    return out


def test_every_recipe_the_train_command_accepts_runs_on_two_ranks():
    trainable = {name for name, r in recipes.all_recipes().items() if r.data is not None}
    assert trainable == set(TINY_RECIPES), "give a new recipe tiny sizes here"
    data = tiny_recipe_data()
    if len(data) < len(trainable):
        warnings.warn("espeakng-loader is not installed: chapter 08's recipes were not run on two ranks", stacklevel=1)
    rank0, rank1 = distributed.run_local(_every_recipe_worker, 2, data)
    assert "train_gan: runs in one process only" in rank0.pop("02.dcgan")
    for name, (weights, history, caught) in rank0.items():
        assert all(math.isfinite(x) for x in history.losses) and len(history) == 2, name
        assert all(torch.equal(weights[k], rank1[name][0][k]) for k in weights), f"{name}: the ranks differ"
        assert not any("Grad strides" in w for w in caught), f"{name}: {caught}"
        assert any("NotEquivalentWarning" in w for w in caught) == (name in NOT_EQUIVALENT), f"{name}: {caught}"
    for name in EXACT & set(rank0):  # and they reproduce one process: the losses and gradients to rounding, ...
        sizes, run = TINY_RECIPES[name], {"progress": False}
        one, history = recipes.train_replica(distributed.Context(), "cpu", name, sizes, data[name], run)
        two = rank0[name][1]
        assert two.losses == pytest.approx(history.losses, rel=1e-5), name
        if "grad_norm" in history.metrics:  # the trainers that clip log it
            assert two["grad_norm"] == pytest.approx(history["grad_norm"], rel=1e-4), name
        # ... the weights to well under one step: Adam moves a weight by about lr (1.5e-3 to 4e-3 here) whatever
        # its gradient's size, so where a gradient is nearly 0 its rounding shows (WaveNet: 1e-4 after two steps)
        assert_same_weights(rank0[name][0], one, atol=3e-4)


# --- run_local's failures -----------------------------------------------------------------------------------


def _exit_on_rank_1(ranks, device):
    if ranks.rank == 1:
        os._exit(3)  # dies without a word, as a process killed or crashed does
    time.sleep(120)  # rank 0 would wait for it


def test_run_local_reports_a_rank_that_dies_without_a_result_at_once():
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"rank 1 \(exit code 3\)"):
        distributed.run_local(_exit_on_rank_1, 2, timeout=100)
    assert time.monotonic() - start < 30


def test_run_local_reports_a_function_the_ranks_cannot_import_with_its_error(monkeypatch):
    ghost = types.ModuleType("aigc_ghost_module")  # importable here only: the fresh process has no such module
    exec("def f(ranks, device):\n    return 1\n", ghost.__dict__)
    monkeypatch.setitem(sys.modules, ghost.__name__, ghost)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="No module named 'aigc_ghost_module'"):
        distributed.run_local(ghost.f, 1, timeout=100)
    assert time.monotonic() - start < 30


def test_run_local_refuses_a_function_of_a_notebook_up_front(monkeypatch):
    notebook = types.ModuleType("__main__")  # a notebook's or a prompt's __main__ has no file to import
    exec("def f(ranks, device):\n    return 1\n", notebook.__dict__)
    monkeypatch.setitem(sys.modules, "__main__", notebook)
    with pytest.raises(ValueError, match="defined in __main__"):
        distributed.run_local(notebook.f, 2)
    with pytest.raises(ValueError, match="lambda"):
        distributed.run_local(lambda ranks, device: 1, 2)


# --- the scaling benchmark ----------------------------------------------------------------------------------


def test_strong_scaling_benchmark_refuses_process_counts_that_do_not_divide_the_batch():
    command = [sys.executable, str(ROOT / "benchmarks" / "distributed.py"), "--scaling", "strong", "--procs", "1", "5"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr[-2000:]
    assert "a global batch of 12 cannot be split among 5 processes" in done.stderr
    assert "a global batch of 32 cannot be split among 5 processes" in done.stderr
