"""Pretrained weights (AIGC_WEIGHTS=pretrained): fit loads the packaged copy instead of training, with
the weights, History, extra state and random state of the finished run; a run they do not fit trains,
with a warning. Then the packaged files themselves: listed, intact, and the recipes' models loaded
from them reproduce the chapters' figures."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from aigc_lib import pretrained, training
from aigc_lib.diffusion.train import EMA
from aigc_lib.training import fit

X = torch.randn(128, 4, generator=torch.Generator().manual_seed(0))
Y = X @ torch.tensor([1.0, -2.0, 3.0, 0.5])


def batch(step: int):
    i = torch.randint(0, len(X), (16,))  # the global RNG: its state at the end is part of the run
    return X[i], Y[i]


def mse(model, b):
    return F.mse_loss(model(b[0]).squeeze(-1), b[1])


def forbidden(model, b):
    raise AssertionError("trained although pretrained weights were asked for")


def make(width: int = 8, seed: int = 1):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, width), nn.Tanh(), nn.Linear(width, 1))
    return model, torch.optim.Adam(model.parameters(), lr=1e-2)


def train_and_export(tmp_path, steps: int = 40):
    """A finished run with an EMA and a second optimizer in its extra state, exported to a package folder."""
    model, opt = make()
    ema, opt2 = EMA(model, decay=0.9), torch.optim.SGD(model.parameters(), lr=0.1)
    ckpt = tmp_path / "runs" / "toy_standard.pt"
    history = fit(model, opt, batch, mse, steps, checkpoint=ckpt, extra_state={"ema": ema, "opt2": opt2},
                  on_step=lambda s: ema.update(model), progress=False)  # fmt: skip
    after = torch.rand(5)  # what the next cell would draw after training
    folder = tmp_path / "package"
    manifest = pretrained.export([ckpt], folder)
    return model, ema, history, after, folder, manifest


@pytest.fixture
def package(tmp_path, monkeypatch):
    model, ema, history, after, folder, manifest = train_and_export(tmp_path)
    monkeypatch.setattr(pretrained, "FOLDER", folder)
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, "pretrained")
    return model, ema, history, after, manifest


def test_fit_loads_the_packaged_run_instead_of_training(package, tmp_path, capsys):
    model, ema, history, after, _ = package
    fresh, opt = make(seed=7)
    fresh_ema, opt2 = EMA(fresh, decay=0.9), torch.optim.SGD(fresh.parameters(), lr=0.1)
    got = fit(fresh, opt, batch, forbidden, 40, checkpoint=tmp_path / "elsewhere" / "toy_standard.pt",
              extra_state={"ema": fresh_ema, "opt2": opt2})  # fmt: skip
    assert "loaded the pretrained weights" in capsys.readouterr().out
    assert got.steps == history.steps and got.losses == history.losses
    for a, b in zip(fresh.state_dict().values(), model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)  # float16 storage
    for a, b in zip(fresh_ema.model.state_dict().values(), ema.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)
    assert fresh_ema.updates == ema.updates == 40
    assert torch.equal(torch.rand(5), after), "the random state at the end of training was not restored"
    assert not (tmp_path / "elsewhere").exists(), "loading pretrained weights must not write a checkpoint"


def test_the_packaged_file_is_compact(package, tmp_path):
    *_, manifest = package
    entry = manifest["toy_standard.pt"]
    state = torch.load(pretrained.FOLDER / "toy_standard.pt", weights_only=True)
    assert set(state) == {"format", "step", "model", "extra", "history", "rng"}
    assert set(state["extra"]) == {"ema"}, "optimizer states are not shipped"
    assert all(t.dtype == torch.float16 for t in state["model"].values())
    assert entry["steps"] == 40 and entry["parameters"] == 4 * 8 + 8 + 8 + 1
    assert entry["bytes"] < (tmp_path / "runs" / "toy_standard.pt").stat().st_size
    assert json.loads((pretrained.FOLDER / pretrained.MANIFEST).read_text()) == manifest


def test_the_default_trains_and_a_local_checkpoint_is_not_read_under_pretrained(package, tmp_path, monkeypatch):
    model, *_ = package
    local = tmp_path / "local" / "toy_standard.pt"
    other, opt = make(seed=3)
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, "train")
    fit(other, opt, batch, mse, 40, checkpoint=local, progress=False)  # a learner's own finished run
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, "pretrained")
    fresh, opt = make(seed=7)
    fit(fresh, opt, batch, forbidden, 40, checkpoint=local, progress=False)
    torch.testing.assert_close(fresh[0].weight, model[0].weight, rtol=1e-3, atol=1e-4)  # the package's
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, "train")
    fresh, opt = make(seed=7)
    fit(fresh, opt, batch, forbidden, 40, checkpoint=local, progress=False)  # the learner's finished run
    torch.testing.assert_close(fresh[0].weight, other[0].weight)
    calls = []
    fresh, opt = make(seed=7)
    fit(fresh, opt, batch, lambda m, b: calls.append(1) or mse(m, b), 3, checkpoint=tmp_path / "toy_standard.pt",
        progress=False)  # fmt: skip
    assert len(calls) == 3, "AIGC_WEIGHTS=train trains"


@pytest.mark.parametrize(
    ("width", "steps", "why"), [(16, 40, "the model differs"), (8, 60, "for 40 steps, this run asks for 60")]
)
def test_a_run_the_weights_do_not_fit_trains_with_a_warning(package, tmp_path, width, steps, why):
    fresh, opt = make(width=width, seed=7)
    before = [p.clone() for p in fresh.parameters()]
    calls = []
    with pytest.warns(UserWarning, match=why):
        fit(fresh, opt, batch, lambda m, b: calls.append(1) or mse(m, b), steps,
            checkpoint=tmp_path / "x" / "toy_standard.pt", progress=False)  # fmt: skip
    assert len(calls) == steps
    assert all(not torch.equal(a, b) for a, b in zip(before, fresh.parameters(), strict=True))


def test_a_missing_extra_state_trains_with_a_warning(package, tmp_path):
    fresh, opt = make(seed=7)
    with pytest.warns(UserWarning, match="no 'snapshots' state"):
        fit(fresh, opt, batch, mse, 40, checkpoint=tmp_path / "toy_standard.pt", progress=False,
            extra_state={"snapshots": EMA(fresh)})  # fmt: skip


def test_the_choice_is_checked_and_shown(monkeypatch):
    from aigc_lib import runtime

    monkeypatch.setenv(pretrained.WEIGHTS_ENV, "yes")
    with pytest.raises(ValueError, match="AIGC_WEIGHTS: expected one of train, pretrained"):
        pretrained.choice()
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, " Pretrained ")
    assert pretrained.choice() == "pretrained"
    assert "weights: pretrained" in runtime.setup(quiet=True).describe()
    monkeypatch.delenv(pretrained.WEIGHTS_ENV)
    assert pretrained.choice() == "train"


def test_a_file_that_is_not_packaged_weights_is_refused(tmp_path):
    torch.save({"step": 1}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a packaged weights file"):
        pretrained.read(tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a checkpoint written by fit"):
        pretrained.compact({"step": 1})


def test_recipe_trained_sees_the_package(package, monkeypatch, tmp_path):
    from aigc_lib import recipes

    recipe = recipes.get("05.unet")
    name = recipe.checkpoint_for("standard").split("/")[-1]
    monkeypatch.chdir(tmp_path)
    assert not recipe.trained("standard")
    (pretrained.FOLDER / name).write_bytes(b"")
    assert recipe.trained("standard")
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, "train")
    assert not recipe.trained("standard")


# --- the packaged files ----------------------------------------------------------------------------

SHIPPED = json.loads((pretrained.FOLDER / pretrained.MANIFEST).read_text()) if (
    pretrained.FOLDER / pretrained.MANIFEST
).exists() else {}  # fmt: skip
MAX_MB = 40  # the README states the total


def test_every_packaged_file_is_listed_and_intact():
    assert SHIPPED, "no MANIFEST.json in aigc_lib/assets/pretrained (tools/export_pretrained.py writes it)"
    on_disk = {p.name for p in pretrained.FOLDER.glob("*.pt")}
    assert on_disk == set(SHIPPED)
    for name, entry in SHIPPED.items():
        path = pretrained.FOLDER / name
        assert path.stat().st_size == entry["bytes"], name
        assert pretrained._sha256(path) == entry["sha256"], f"{name} changed after export"
        assert "_standard" in name
    assert sum(e["bytes"] for e in SHIPPED.values()) < MAX_MB * 1e6


def test_every_recipe_has_packaged_weights_for_the_standard_budget():
    from aigc_lib import recipes

    names = {r.name: r.checkpoint_for("standard").split("/")[-1] for r in recipes.all_recipes().values()}
    missing = {recipe: name for recipe, name in names.items() if name not in SHIPPED}
    assert not missing, f"no packaged weights for {missing}"


# --- the recipes' models from the packaged files reproduce the chapters' figures --------------------
# Each figure is computed as its notebook computes it at the standard budget (same data, seeds and
# protocol); `expected` is the notebook's figure from the float32 checkpoint these files were exported
# from, and the tolerance allows for float16 storage (and for BLAS differences between CPUs).


@pytest.fixture
def load_only(monkeypatch, capsys):
    """Recipes run under AIGC_WEIGHTS=pretrained; fails if fit went past the packaged weights (to a local
    checkpoint or to training)."""
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, "pretrained")
    monkeypatch.setattr(training, "_read_checkpoint", lambda *a: pytest.fail("not loaded from the package"))

    def run(name, data, **options):
        from aigc_lib import recipes

        result = recipes.get(name).run(data, budget="standard", progress=True, **options)
        assert "loaded the pretrained weights" in capsys.readouterr().out
        return result

    return run


@pytest.mark.slow
def test_02_dcgan_figures(load_only):
    from aigc_lib import data, gan, metrics

    G, _, _ = load_only("02.dcgan", data.mnist5k("train"))
    r = metrics.evaluate_digits(gan.to_unit(gan.sample(G, 1000, seed=123)))
    assert r["fd"] == pytest.approx(182.0, abs=4) and r["recognisability"] == pytest.approx(0.705, abs=0.01)


@pytest.mark.slow
def test_03_conv_vae_figures(load_only):
    from aigc_lib import data, vae

    model, _ = load_only("03.conv_vae", data.mnist5k("train"))
    nelbo = vae.evaluate_nelbo(model, vae.binarize(data.mnist5k("test").images, seed=0))["nelbo"]
    assert nelbo == pytest.approx(110.5, abs=0.3)


@pytest.mark.slow
def test_04_char_gpt_figures(load_only):
    from aigc_lib import data, generation

    tok = data.CharTokenizer.from_text(data.shakespeare_text("all"))
    gpt, _ = load_only("04.char_gpt", tok.encode(data.shakespeare_text("train")))
    val = tok.encode(data.shakespeare_text("val")[:100_000])
    assert generation.sliding_window_nll(gpt, val, 64, 16) == pytest.approx(1.763, abs=0.003)


@pytest.mark.slow
def test_05_unet_figures(load_only):
    from aigc_lib import data, metrics
    from aigc_lib import diffusion as dm

    _, _, ema = load_only("05.unet", data.mnist5k("train"))
    asked = torch.arange(10).repeat_interleave(20)  # §6: prompted samples at guidance 3
    imgs = dm.sample(ema.model, len(asked), dm.linear_schedule(T=1000), labels=asked, guidance=3.0, steps=50, eta=1.0,
                     generator=torch.Generator().manual_seed(4), progress=False)  # fmt: skip
    matched = (metrics.digit_probs(dm.to_unit(imgs)).argmax(1).cpu() == asked).float().mean().item()
    assert matched >= 0.98  # 99.5% in the notebook
