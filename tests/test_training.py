"""fit(): learns, clips, stops on nan/inf, checkpoints, resumes bit-exactly, never syncs per step."""

from __future__ import annotations

import math
import signal
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aigc_lib import training
from aigc_lib.training import History, NonFiniteLossError, describe_sources, fit

W_TRUE = torch.tensor([1.0, -2.0, 3.0, 0.5])
X = torch.randn(256, 4, generator=torch.Generator().manual_seed(0))
Y = X @ W_TRUE + 0.5


def random_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Draws with the global torch RNG, so an exact resume needs fit to restore it."""
    i = torch.randint(0, len(X), (32,))
    return X[i], Y[i]


def mse(model: nn.Module, batch) -> torch.Tensor:
    x, y = batch[0], batch[1]
    return F.mse_loss(model(x).squeeze(-1), y)


def make(seed: int = 1, lr: float = 1e-2):
    """A small MLP with dropout (uses the RNG), Adam (has state) and a scheduler (has state)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return model, opt, torch.optim.lr_scheduler.StepLR(opt, step_size=5, gamma=0.8)


def assert_same_weights(a: nn.Module, b: nn.Module) -> None:
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(p, q), name


def straight_run(steps: int = 20, batches=random_batch, loss_fn=mse) -> tuple[nn.Module, History]:
    model, opt, sched = make()
    torch.manual_seed(123)
    return model, fit(model, opt, batches, loss_fn, steps, scheduler=sched, log_every=3, progress=False)


def test_regression_learns():
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    hist = fit(model, opt, random_batch, mse, 300, log_every=50)
    assert hist.steps == list(range(300)) and len(hist.losses) == 300
    assert hist.losses[-1] < 1e-3 * hist.losses[0]
    assert torch.allclose(model.weight.detach().squeeze(), W_TRUE, atol=1e-2)
    assert model.training  # the mode it had before


def test_dict_metrics_are_logged():
    def vae_like(model, batch):
        err = model(batch[0]).squeeze(-1) - batch[1]
        return {"loss": err.pow(2).mean(), "mae": err.abs().mean().detach()}

    model, opt, _ = make()
    hist = fit(model, opt, random_batch, vae_like, 12, log_every=5, progress=False)
    assert set(hist.as_dict()) == {"step", "loss", "mae"}
    assert len(hist["mae"]) == 12 and all(isinstance(v, float) for v in hist["mae"])
    assert History.from_dict(hist.as_dict()) == hist


def test_grad_clip_inf_logs_the_norm_and_clips_nothing():
    torch.manual_seed(0)
    runs = []
    for clip in (None, math.inf):
        torch.manual_seed(0)
        model = nn.Linear(4, 1)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        hist = fit(model, opt, lambda step: (X, 100 * Y), mse, 5, grad_clip=clip, log_every=1, progress=False)
        runs.append((hist, model.weight.detach().clone()))
    (plain, w_plain), (logged, w_logged) = runs
    assert "grad_norm" not in plain.metrics and len(logged["grad_norm"]) == 5
    assert min(logged["grad_norm"]) > 1.0  # large gradients, left unclipped:
    assert torch.equal(w_plain, w_logged)


def test_grad_clip_bounds_the_gradient_norm():
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    seen = []
    # The norm of the gradients the optimizer actually applies.
    opt.register_step_pre_hook(
        lambda o, args, kwargs: seen.append(torch.cat([p.grad.flatten() for p in model.parameters()]).norm().item())
    )
    hist = fit(model, opt, lambda step: (X, 100 * Y), mse, 10, grad_clip=0.5, progress=False)
    assert max(seen) <= 0.5 * (1 + 1e-5)
    assert min(hist["grad_norm"]) > 0.5  # the raw norm was larger: clipping did the work


def test_nan_guard_huge_learning_rate():
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=1e30)
    with pytest.raises(NonFiniteLossError, match="lower learning rate") as info:
        fit(model, opt, random_batch, mse, 50, log_every=10, progress=False)
    assert isinstance(info.value, FloatingPointError)
    assert info.value.step < 10 and info.value.history.steps == list(range(info.value.step))


def test_nan_guard_leaves_checkpoint_untouched(tmp_path):
    ckpt = tmp_path / "run.pt"
    model, opt, _ = make()
    fit(model, opt, random_batch, mse, 5, checkpoint=ckpt, progress=False)
    before = ckpt.read_bytes()

    def nan_from_step_7(model, batch):
        x, y, step = batch
        loss = F.mse_loss(model(x).squeeze(-1), y)
        return loss * float("nan") if step >= 7 else loss

    with pytest.raises(NonFiniteLossError) as info:
        fit(
            model,
            opt,
            lambda s: (*random_batch(s), s),
            nan_from_step_7,
            20,
            checkpoint=ckpt,
            ckpt_every=5,
            log_every=5,
            progress=False,
        )
    msg = str(info.value)
    assert "loss=nan at step 7" in msg and "last finite loss" in msg and "at step 6" in msg
    assert "was not updated" in msg and "grad_clip" in msg
    assert ckpt.read_bytes() == before  # the step-10 save never happened
    assert not list(tmp_path.glob("*.tmp"))


def test_non_finite_weights_are_never_saved(tmp_path):
    ckpt = tmp_path / "run.pt"
    model = nn.Linear(4, 1)
    opt = torch.optim.SGD(model.parameters(), lr=float("inf"))  # the step-0 loss is fine, the weights are not
    with pytest.raises(NonFiniteLossError, match="weights hold nan/inf"):
        fit(model, opt, random_batch, mse, 5, checkpoint=ckpt, ckpt_every=1, progress=False)
    assert not ckpt.exists()


class InterruptAt:
    """A loss_fn that raises KeyboardInterrupt at its k-th call, after it has used the RNG."""

    def __init__(self, k: int):
        self.k, self.calls = k, 0

    def __call__(self, model, batch):
        loss = mse(model, batch)  # dropout draws from the RNG before the interrupt
        self.calls += 1
        if self.calls == self.k + 1:
            raise KeyboardInterrupt
        return loss


@pytest.mark.parametrize("batches", [random_batch, [random_batch(i) for i in range(7)]], ids=["callable", "list"])
def test_interrupt_saves_and_resume_is_exact(tmp_path, capsys, batches):
    ref_model, ref_hist = straight_run(20, batches)

    ckpt = tmp_path / "sub" / "run.pt"
    model, opt, sched = make()
    torch.manual_seed(123)
    with pytest.raises(KeyboardInterrupt):
        fit(
            model,
            opt,
            batches,
            InterruptAt(13),
            20,
            scheduler=sched,
            checkpoint=ckpt,
            ckpt_every=4,
            log_every=3,
            progress=False,
        )
    assert "interrupted at step 13; checkpoint saved to" in capsys.readouterr().out
    assert torch.load(ckpt, weights_only=True)["step"] == 13

    model, opt, sched = make(seed=2)  # a fresh kernel: other init, other RNG state
    torch.manual_seed(999)
    hist = fit(
        model,
        opt,
        batches,
        mse,
        20,
        scheduler=sched,
        checkpoint=ckpt,
        ckpt_every=4,
        log_every=3,
        progress=False,
    )
    assert_same_weights(model, ref_model)
    assert hist == ref_hist
    assert (ref_hist.source, hist.source) == ("trained", "resumed")
    assert hist.how_obtained(12.4) == "trained (resumed from its checkpoint) in 12 s"


def test_more_steps_continue_a_finished_run(tmp_path):
    ref_model, ref_hist = straight_run(20)
    ckpt = tmp_path / "run.pt"
    for steps, seed in (
        (10, 1),
        (20, 5),
    ):  # the second run starts from another init: the checkpoint wins
        model, opt, sched = make(seed)
        torch.manual_seed(123)
        hist = fit(
            model,
            opt,
            random_batch,
            mse,
            steps,
            scheduler=sched,
            checkpoint=ckpt,
            log_every=3,
            progress=False,
        )
    assert_same_weights(model, ref_model)
    assert hist == ref_hist
    assert (ref_hist.source, hist.source) == ("trained", "resumed")
    assert hist.how_obtained(12.4) == "trained (resumed from its checkpoint) in 12 s"


@pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread() or not callable(signal.getsignal(signal.SIGINT)),
    reason="needs Python's Ctrl-C handler in the main thread",
)
@pytest.mark.parametrize(("where", "saved_step"), [("forward", 8), ("update", 9)])
def test_real_ctrl_c_saves_a_resumable_checkpoint(tmp_path, where, saved_step):
    """SIGINT in the forward pass stops at once; inside optimizer.step() it lets step 8 finish."""
    ref_model, _ = straight_run(20)
    ckpt = tmp_path / "run.pt"
    model, opt, sched = make()
    calls = []

    def ctrl_c_in_step_8(*args):
        calls.append(1)
        if len(calls) == 9:
            signal.raise_signal(signal.SIGINT)

    def loss_fn(model, batch):
        if where == "forward":
            ctrl_c_in_step_8()
        return mse(model, batch)

    if where == "update":
        opt.register_step_post_hook(ctrl_c_in_step_8)
    handler = signal.getsignal(signal.SIGINT)
    torch.manual_seed(123)
    with pytest.raises(KeyboardInterrupt):
        fit(
            model,
            opt,
            random_batch,
            loss_fn,
            20,
            scheduler=sched,
            checkpoint=ckpt,
            log_every=3,
            progress=False,
        )
    assert torch.load(ckpt, weights_only=True)["step"] == saved_step
    assert signal.getsignal(signal.SIGINT) is handler  # fit put the Ctrl-C handler back

    model, opt, sched = make(seed=2)
    fit(
        model,
        opt,
        random_batch,
        mse,
        20,
        scheduler=sched,
        checkpoint=ckpt,
        log_every=3,
        progress=False,
    )
    assert_same_weights(model, ref_model)


def test_finished_run_returns_immediately(tmp_path):
    ckpt = tmp_path / "run.pt"
    model, opt, sched = make()
    first = fit(model, opt, random_batch, mse, 10, scheduler=sched, checkpoint=ckpt, progress=False)

    def never(model, batch):
        raise AssertionError("a finished run must not train again")

    fresh, opt, sched = make(seed=3)
    again = fit(fresh, opt, random_batch, never, 10, scheduler=sched, checkpoint=ckpt, progress=False)
    assert again == first
    assert_same_weights(fresh, model)  # the trained weights were loaded
    assert (first.source, again.source) == ("trained", "checkpoint")
    assert again.how_obtained(0.2) == "loaded its finished checkpoint in 0 s"
    assert describe_sources([first]) == "trained here"
    assert describe_sources([again, again]) == "both loaded from finished checkpoints"
    assert describe_sources([first] * 3) == "all 3 trained here"
    assert describe_sources([first, again, again]) == "1 trained here, 2 loaded from finished checkpoints"
    with pytest.raises(ValueError, match="at least one"):
        describe_sources([])
    again.source = "loaded"
    with pytest.raises(ValueError, match="History.source: expected one of trained, resumed"):
        again.how_obtained(1.0)


def test_checkpoint_loads_with_weights_only(tmp_path):
    ckpt = tmp_path / "run.pt"
    model, opt, sched = make()
    extra = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1)
    fit(
        model,
        opt,
        random_batch,
        mse,
        6,
        scheduler=sched,
        checkpoint=ckpt,
        extra_state={"opt_d": extra},
        progress=False,
    )
    state = torch.load(ckpt, weights_only=True)
    assert {"step", "model", "optimizer", "scheduler", "extra", "history", "rng"} <= set(state)
    assert state["step"] == 6 and state["history"]["step"] == list(range(6))
    with pytest.raises(ValueError, match="extra_state"):  # saved with opt_d, resumed without it
        fit(model, opt, random_batch, mse, 8, scheduler=sched, checkpoint=ckpt, progress=False)
    other = nn.Linear(3, 3)
    with pytest.raises(ValueError, match="does not match this model"):
        fit(
            other,
            torch.optim.SGD(other.parameters(), lr=0.1),
            random_batch,
            mse,
            8,
            scheduler=torch.optim.lr_scheduler.StepLR(torch.optim.SGD(other.parameters(), lr=0.1), 1),
            checkpoint=ckpt,
            extra_state={"opt_d": extra},
            progress=False,
        )


def gan_setup(seed: int = 1):
    """The GAN pattern from fit's docstring: loss_fn steps D, fit steps G, opt_d rides in extra_state."""
    torch.manual_seed(seed)
    gan = nn.ModuleDict({"G": nn.Linear(2, 4), "D": nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))})
    opt_g = torch.optim.Adam(gan["G"].parameters(), lr=1e-2)
    opt_d = torch.optim.Adam(gan["D"].parameters(), lr=1e-2)

    def gan_loss(gan, real):
        fake = gan["G"](torch.randn(len(real), 2))
        ones, zeros = torch.ones(len(real), 1), torch.zeros(len(real), 1)
        d_loss = F.binary_cross_entropy_with_logits(gan["D"](real), ones) + F.binary_cross_entropy_with_logits(
            gan["D"](fake.detach()), zeros
        )
        opt_d.zero_grad(set_to_none=True)
        d_loss.backward()
        opt_d.step()
        g_loss = F.binary_cross_entropy_with_logits(gan["D"](fake), ones)
        return {"loss": g_loss, "d_loss": d_loss.detach()}

    return gan, opt_g, opt_d, gan_loss


def test_gan_two_optimizers_resume_exactly(tmp_path):
    def batches(step):
        return X[torch.randint(0, len(X), (16,))]

    ref, opt_g, opt_d, gan_loss = gan_setup()
    torch.manual_seed(7)
    ref_hist = fit(ref, opt_g, batches, gan_loss, 12, extra_state={"opt_d": opt_d}, progress=False)
    assert set(ref_hist.metrics) == {"loss", "d_loss"}

    ckpt = tmp_path / "gan.pt"
    for steps, seed in ((6, 1), (12, 4)):
        gan, opt_g, opt_d, gan_loss = gan_setup(seed)
        torch.manual_seed(7)
        hist = fit(
            gan,
            opt_g,
            batches,
            gan_loss,
            steps,
            checkpoint=ckpt,
            extra_state={"opt_d": opt_d},
            progress=False,
        )
    assert_same_weights(gan, ref)
    assert hist == ref_hist


def test_lstm_carried_state_pattern_resumes_exactly(tmp_path):
    """Truncated BPTT as in fit's docstring: the carry is reset at steps the batch function names."""
    text = torch.randint(0, 5, (4, 65), generator=torch.Generator().manual_seed(0))  # 4 streams
    n_chunks = 4  # 4 chunks of 16 tokens per pass over the text

    def batches(step):
        i = (step % n_chunks) * 16
        return text[:, i : i + 16], text[:, i + 1 : i + 17], step % n_chunks == 0

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb, self.lstm, self.head = (
                nn.Embedding(5, 8),
                nn.LSTM(8, 16, batch_first=True),
                nn.Linear(16, 5),
            )

        def forward(self, x, h=None):
            out, h = self.lstm(self.emb(x), h)
            return self.head(out), h

    def run(steps, ckpt=None, seed=1):
        torch.manual_seed(seed)
        model = LM()
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        carry = {"h": None}

        def lm_loss(model, batch):
            x, y, reset = batch
            logits, h = model(x, None if reset else carry["h"])
            carry["h"] = tuple(t.detach() for t in h)
            return F.cross_entropy(logits.flatten(0, 1), y.flatten())

        return model, fit(model, opt, batches, lm_loss, steps, checkpoint=ckpt, progress=False)

    ref, ref_hist = run(12)
    ckpt = tmp_path / "lm.pt"
    run(8, ckpt)  # stops at a pass boundary (8 % n_chunks == 0)
    model, hist = run(12, ckpt, seed=3)
    assert_same_weights(model, ref)
    assert hist == ref_hist


@pytest.mark.parametrize(("steps", "log_every", "syncs"), [(50, 10, 5), (25, 10, 3), (7, 50, 1)])
def test_one_host_sync_per_log_window(monkeypatch, steps, log_every, syncs):
    # Every device -> host copy in fit goes through `_to_host`, so counting it counts the syncs.
    calls = []
    real = training._to_host
    monkeypatch.setattr(training, "_to_host", lambda t: calls.append(1) or real(t))
    model, opt, _ = make()
    fit(model, opt, random_batch, mse, steps, log_every=log_every, grad_clip=1.0, progress=False)
    assert len(calls) == syncs


def test_iterables_restart_each_epoch_and_iterators_must_not_run_out():
    model, opt, _ = make()
    hist = fit(model, opt, [random_batch(i) for i in range(3)], mse, 10, progress=False)
    assert len(hist) == 10
    with pytest.raises(ValueError, match="iterator ran out after 3 batches"):
        fit(model, opt, iter([random_batch(i) for i in range(3)]), mse, 10, progress=False)
    with pytest.raises(ValueError, match="no batches"):
        fit(model, opt, [], mse, 10, progress=False)


def test_bad_arguments_name_what_was_wrong():
    model, opt, _ = make()
    cases = [
        (dict(steps=0), "steps: expected a positive int, got 0"),
        (dict(steps=2.5), "steps: expected a positive int"),
        (dict(grad_clip=-1.0), "grad_clip: expected a positive"),
        (dict(grad_clip=float("nan")), "grad_clip"),
        (dict(log_every=0), "log_every"),
        (dict(ckpt_every=True), "ckpt_every"),
        (dict(batches=3), "batches: expected a callable"),
        (dict(optimizer="adam"), "optimizer: expected"),
        (
            dict(loss_fn=lambda m, b: m(b[0])),
            r"loss_fn: 'loss' must be a scalar tensor; got shape \(32, 1\)",
        ),
        (dict(loss_fn=lambda m, b: {"mse": mse(m, b)}), "must have the key 'loss'"),
        (dict(loss_fn=lambda m, b: mse(m, b).detach()), "does not require grad"),
        (dict(extra_state={"ema": 1}), r"extra_state\['ema'\]"),
    ]
    for override, message in cases:
        kwargs = (
            dict(
                model=model,
                optimizer=opt,
                batches=random_batch,
                loss_fn=mse,
                steps=5,
                progress=False,
            )
            | override
        )
        with pytest.raises(ValueError, match=message):
            fit(**kwargs)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_bf16_autocast_without_per_step_syncs(monkeypatch):
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 64), nn.ReLU(), nn.Linear(64, 1)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    dtypes = set()

    def loss_fn(model, batch):
        out = model(batch[0])
        dtypes.add(out.dtype)
        return F.mse_loss(out.squeeze(-1).float(), batch[1])

    # Any sync outside the flush helper raises (cudaStreamSynchronize, blocking copies, .item()).
    real = training._to_host

    def allowed_sync(t):
        torch.cuda.set_sync_debug_mode(0)
        try:
            return real(t)
        finally:
            torch.cuda.set_sync_debug_mode("error")

    monkeypatch.setattr(training, "_to_host", allowed_sync)
    Xc, Yc = X.to(device), Y.to(device)
    idx = torch.randint(0, len(X), (300, 32), device=device)
    fit(model, opt, lambda s: (Xc[idx[s % 300]], Yc[idx[s % 300]]), loss_fn, 1, progress=False)  # warm up lazy init
    torch.cuda.set_sync_debug_mode("error")
    try:
        hist = fit(
            model,
            opt,
            lambda s: (Xc[idx[s % 300]], Yc[idx[s % 300]]),
            loss_fn,
            300,
            grad_clip=1.0,
            log_every=100,
            progress=False,
        )
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert dtypes == {torch.bfloat16}
    assert hist.losses[-1] < 0.05 * hist.losses[0]


def test_on_log_sees_the_history_after_every_flush():
    seen = []
    model, opt, _ = make()
    hist = fit(
        model, opt, random_batch, mse, 12, log_every=5, progress=False, on_log=lambda h: seen.append(list(h.steps))
    )
    assert seen == [list(range(5)), list(range(10)), list(range(12))]
    assert hist.steps == list(range(12))
    with pytest.raises(ValueError, match="on_log"):
        fit(model, opt, random_batch, mse, 2, progress=False, on_log="plot")


def test_epoch_indices_cover_each_epoch_once_and_depend_only_on_the_step():
    order = training.epoch_indices(10, 3, seed=5)
    epoch0 = torch.cat([order(s) for s in range(3)])  # 3 batches of 3; the 10th index is dropped
    assert len(epoch0.unique()) == 9 and not torch.equal(epoch0, torch.cat([order(s) for s in range(3, 6)]))
    assert torch.equal(training.epoch_indices(10, 3, seed=5)(4), order(4))  # a fresh object (a resume) agrees
    assert not torch.equal(training.epoch_indices(10, 3, seed=6)(0), order(0))
    with pytest.raises(ValueError, match="batch_size"):
        training.epoch_indices(2, 3)


def test_on_log_is_shown_the_history_of_a_finished_run_that_is_loaded(tmp_path):
    model, opt, _ = make()
    fit(model, opt, random_batch, mse, 6, log_every=5, progress=False, checkpoint=tmp_path / "run.pt")
    seen = []
    fit(
        model,
        opt,
        random_batch,
        mse,
        6,
        progress=False,
        checkpoint=tmp_path / "run.pt",
        on_log=lambda h: seen.append(list(h.steps)),
    )
    assert seen == [list(range(6))]


class Average:
    """A running mean of the weights, updated by `on_step` and checkpointed through extra_state."""

    def __init__(self, model: nn.Module):
        self.model, self.mean, self.seen = model, [p.detach().clone() for p in model.parameters()], []

    def __call__(self, step: int) -> None:
        self.seen.append(step)
        for m, p in zip(self.mean, self.model.parameters(), strict=True):
            m.lerp_(p.detach(), 0.1)

    def state_dict(self):
        return {"mean": [m.clone() for m in self.mean]}

    def load_state_dict(self, state):
        self.mean = [m.clone() for m in state["mean"]]


def test_on_step_runs_after_every_update_and_its_state_resumes_exactly(tmp_path):
    model, opt, sched = make()
    ref = Average(model)
    torch.manual_seed(123)
    fit(model, opt, random_batch, mse, 12, scheduler=sched, on_step=ref, extra_state={"avg": ref}, progress=False)
    assert ref.seen == list(range(1, 13))  # after the update of steps 0..11: 1..12 steps done

    ckpt = tmp_path / "run.pt"
    model, opt, sched = make()
    avg = Average(model)
    torch.manual_seed(123)
    fit(
        model,
        opt,
        random_batch,
        mse,
        7,
        scheduler=sched,
        on_step=avg,
        extra_state={"avg": avg},
        checkpoint=ckpt,
        ckpt_every=7,
        progress=False,
    )
    model, opt, sched = make(seed=2)
    avg = Average(model)
    torch.manual_seed(999)
    fit(
        model,
        opt,
        random_batch,
        mse,
        12,
        scheduler=sched,
        on_step=avg,
        extra_state={"avg": avg},
        checkpoint=ckpt,
        ckpt_every=7,
        progress=False,
    )
    assert avg.seen == list(range(8, 13))
    for a, b in zip(avg.mean, ref.mean, strict=True):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="on_step: expected a callable"):
        fit(model, opt, random_batch, mse, 1, on_step=3, progress=False)
