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


def extras(model):
    """The extra state of the packaged toy run: an EMA and a second optimizer."""
    return {"ema": EMA(model, decay=0.9), "opt2": torch.optim.SGD(model.parameters(), lr=0.1)}


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
    assert got.source == "pretrained" and got.how_obtained(1.2) == "loaded the pretrained weights in 1 s"
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
    assert set(state) == {"format", "step", "model", "extra", "optimizers", "scheduler", "history", "rng"}
    assert state["optimizers"][""][0]["lr"] == 1e-2 and "params" not in state["optimizers"]["opt2"][0]
    assert set(state["extra"]) == {"ema"}, "optimizer states are not shipped"
    assert all(t.dtype == torch.float16 for t in state["model"].values())
    assert entry["steps"] == 40 and entry["values"] == 4 * 8 + 8 + 8 + 1
    assert entry["bytes"] < (tmp_path / "runs" / "toy_standard.pt").stat().st_size
    assert json.loads((pretrained.FOLDER / pretrained.MANIFEST).read_text()) == manifest


def test_the_default_trains_and_a_local_checkpoint_is_not_read_under_pretrained(package, tmp_path, monkeypatch):
    model, *_ = package
    local = tmp_path / "local" / "toy_standard.pt"
    other, opt = make(seed=3)
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, "train")
    fit(other, opt, batch, mse, 40, checkpoint=local, progress=False, extra_state=extras(other))  # a learner's own run
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, "pretrained")
    fresh, opt = make(seed=7)
    fit(fresh, opt, batch, forbidden, 40, checkpoint=local, progress=False, extra_state=extras(fresh))
    torch.testing.assert_close(fresh[0].weight, model[0].weight, rtol=1e-3, atol=1e-4)  # the package's
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, "train")
    fresh, opt = make(seed=7)
    fit(fresh, opt, batch, forbidden, 40, checkpoint=local, progress=False, extra_state=extras(fresh))  # the learner's
    torch.testing.assert_close(fresh[0].weight, other[0].weight)
    calls = []
    fresh, opt = make(seed=7)
    fit(fresh, opt, batch, lambda m, b: calls.append(1) or mse(m, b), 3, checkpoint=tmp_path / "toy_standard.pt",
        progress=False)  # fmt: skip
    assert len(calls) == 3, "AIGC_WEIGHTS=train trains"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"width": 16}, "the model differs"),
        ({"steps": 60}, "they are for 40 steps, this run asks for 60"),
        ({"lr": 3e-2}, "the optimizer's settings differ"),
        ({"scheduler": True}, "they were trained without a learning-rate scheduler"),
        ({"extra": "ema"}, "the run keeps other extra state"),
        ({"extra": "opt3"}, "the run keeps other extra state"),
    ],
)
def test_a_run_the_weights_do_not_fit_trains_and_says_why(package, tmp_path, capsys, change, why):
    fresh, opt = make(width=change.get("width", 8), seed=7)
    if "lr" in change:
        opt = torch.optim.Adam(fresh.parameters(), lr=change["lr"])
    scheduler = torch.optim.lr_scheduler.StepLR(opt, 10) if change.get("scheduler") else None
    extra = {"ema": EMA(fresh, decay=0.9), "opt2": torch.optim.SGD(fresh.parameters(), lr=0.1)}
    if change.get("extra") == "ema":
        del extra["ema"]
    elif change.get("extra"):
        extra[change["extra"]] = torch.optim.SGD(fresh.parameters(), lr=0.1)
    before = [p.clone() for p in fresh.parameters()]
    calls = []
    fit(fresh, opt, batch, lambda m, b: calls.append(1) or mse(m, b), change.get("steps", 40), scheduler=scheduler,
        checkpoint=tmp_path / "x" / "toy_standard.pt", progress=False, extra_state=extra)  # fmt: skip
    out = capsys.readouterr().out
    assert "toy_standard.pt are not used: " + why in out, out  # printed even with progress=False
    assert len(calls) == change.get("steps", 40)
    assert all(not torch.equal(a, b) for a, b in zip(before, fresh.parameters(), strict=True))


def test_loading_is_announced_without_a_progress_bar_and_the_same_settings_load(package, tmp_path, capsys):
    fresh, opt = make(seed=7)
    extra = {"ema": EMA(fresh, decay=0.9), "opt2": torch.optim.SGD(fresh.parameters(), lr=0.1)}
    fit(fresh, opt, batch, forbidden, 40, checkpoint=tmp_path / "toy_standard.pt", progress=False, extra_state=extra)
    assert "toy_standard.pt: 40 steps at the standard budget" in capsys.readouterr().out


def test_a_damaged_packaged_file_names_itself_and_the_fix(package, tmp_path):
    (pretrained.FOLDER / "toy_standard.pt").write_bytes(b"version https://git-lfs.github.com/spec/v1\n")
    fresh, opt = make(seed=7)
    with pytest.raises(ValueError, match=r"toy_standard.pt.* is damaged .*git checkout -- aigc_lib/assets/pretrained"):
        fit(fresh, opt, batch, forbidden, 40, checkpoint=tmp_path / "toy_standard.pt", progress=False)


def test_export_refuses_an_unfinished_run_and_removes_stale_files(tmp_path):
    model, opt = make()
    ckpt = tmp_path / "runs" / "cut_standard.pt"

    def interrupt(step):
        if step == 12:
            raise KeyboardInterrupt  # what Ctrl-C does: fit saves the checkpoint and re-raises

    with pytest.raises(KeyboardInterrupt):
        fit(model, opt, batch, mse, 40, checkpoint=ckpt, progress=False, on_step=interrupt)
    folder = tmp_path / "package"
    folder.mkdir()
    (folder / "old_standard.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match="unfinished run \\(step 12 of 40\\)"):
        pretrained.export([ckpt], folder)
    assert (folder / "old_standard.pt").exists() and not (folder / pretrained.MANIFEST).exists(), "nothing written"
    model, opt = make()
    done = tmp_path / "runs" / "done_standard.pt"
    fit(model, opt, batch, mse, 10, checkpoint=done, progress=False)
    assert set(pretrained.export([done], folder)) == {"done_standard.pt"}
    assert {p.name for p in folder.iterdir()} == {"done_standard.pt", pretrained.MANIFEST}


def test_pretrained_makes_standard_the_default_budget_and_train_ignores_it(monkeypatch, tmp_path, capsys):
    from aigc_lib import runtime

    monkeypatch.setenv(pretrained.WEIGHTS_ENV, "pretrained")
    monkeypatch.delenv("AIGC_BUDGET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU would mean 'full' otherwise
    assert runtime.current_budget() == "standard"
    monkeypatch.undo()
    monkeypatch.setenv(pretrained.WEIGHTS_ENV, "pretrained")
    monkeypatch.setenv("AIGC_BUDGET", "full")
    runtime.setup()
    assert (
        "the pretrained weights are the standard budget's; at budget full every model trains" in capsys.readouterr().out
    )


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
MAX_MB = 60  # the README states the total (54 MB)


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


@pytest.mark.slow
def test_06_clip_figures(load_only):
    from aigc_lib import captions, clip, recipes

    model, _ = load_only(
        "06.clip", captions.captioned_digits("train", n=recipes.get("06.clip").sizes_for("standard")["images"])
    )
    model.eval()
    test = captions.captioned_digits("test")
    assert clip.zero_shot_accuracy(model, test, "digit") == pytest.approx(0.872, abs=0.006)  # §4, ensemble, English
    assert clip.zero_shot_accuracy(model, test, "colour") == pytest.approx(0.997, abs=0.004)


@pytest.fixture(scope="module")
def renders():
    from aigc_lib import captions

    return captions.captioned_digits("train", n=20_000), captions.captioned_digits("test")


@pytest.mark.slow
def test_07_judge_autoencoder_and_latent_unet_figures(load_only, renders):
    from aigc_lib import captions, diffusion, recipes
    from aigc_lib.recipes import ch07
    from aigc_lib.text_to_image import autoencoder as ae
    from aigc_lib.text_to_image import judge as jd
    from aigc_lib.text_to_image import pipeline as t2i

    train, test = renders
    judge, _ = load_only("07.judge", captions.captioned_digits("train", n=20_000, include_holdout="both"))
    judge.eval()
    assert jd.judge_accuracy(judge, test)["digit"] == pytest.approx(0.949, abs=0.006)  # §1
    autoencoder, _ = load_only("07.autoencoder", train)
    autoencoder.eval()
    recon = ae.decode_latents(autoencoder, ae.encode_latents(autoencoder, test.images))
    judged = jd.judge_accuracy(judge, captions.CaptionedDigits(recon, test.attrs, test.source, "test"))
    assert judged["digit"] == pytest.approx(0.928, abs=0.01)  # §3: the judge on reconstructions
    clip_model = load_only(
        "06.clip", captions.captioned_digits("train", n=recipes.get("06.clip").sizes_for("standard")["images"])
    )[0]
    _, _, ema, scale = load_only("07.latent_unet", train, clip_model=t2i.frozen(clip_model), autoencoder=autoencoder)
    model = t2i.TextToImage(clip_model, ema.model, diffusion.linear_schedule(ch07.T), autoencoder, scale)
    r = t2i.prompt_following(model, judge, test.subset(torch.arange(100)), lang="en", guidance=4.0, seed=7)
    assert r["digit"].float().mean().item() == pytest.approx(0.43, abs=0.03)  # §9, w = 4, 100 captions
    assert r["all"].float().mean().item() == pytest.approx(0.29, abs=0.03)


@pytest.mark.slow
def test_08_wavenet_fastspeech_and_judge_figures(load_only, tmp_path_factory):
    from aigc_lib.recipes import ch08
    from aigc_lib.speech import tts

    cache = str(tmp_path_factory.mktemp("speech"))  # the teacher's speech, synthesised here (espeak-ng)
    corpus = tts.number_corpus(cache=cache)
    wavenet, _ = load_only("08.wavenet", tts.wavenet_codes(corpus.train))
    wavenet.eval()
    test_codes = tts.wavenet_codes(corpus.test["en"] + corpus.test["zh"])
    with torch.no_grad():  # §3: held-out phrases, 16 crops of 8,192 samples
        crops = test_codes[: len(test_codes) // 8192 * 8192].view(-1, 8192)[:16]
        logits = wavenet(crops[:, :-1])[:, :, wavenet.receptive_field - 1 :]
        nll = float(F.cross_entropy(logits, crops[:, wavenet.receptive_field :]))
    assert nll == pytest.approx(3.48, abs=0.01)
    model, _ = load_only("08.fastspeech", corpus)
    model.eval()
    judge, _ = load_only(
        "08.judge", tts.judge_corpus(ch08.JUDGE_VARIANTS, ch08.JUDGE_PER_VOICE["standard"], cache=cache)
    )
    judge.eval()
    for lang, mcd in (("en", 5.22), ("zh", 4.76)):  # §4 and §5: all 100 held-out numbers per language
        s = tts.evaluate_tts(model, corpus.vocab, corpus.test[lang], corpus.held_out[lang], judge)
        assert s["mcd_teacher_durations"] == pytest.approx(mcd, abs=0.03)
        assert s["heard_tts"] >= 0.98  # 100% in the notebook


def test_the_train_command_trains_under_pretrained(monkeypatch, tmp_path, capsys):
    from aigc_lib.__main__ import main

    monkeypatch.setenv(pretrained.WEIGHTS_ENV, "pretrained")
    monkeypatch.chdir(tmp_path)
    ckpt = tmp_path / "unet.pt"
    assert main(["train", "05.unet", "--budget", "smoke", "--steps", "2", "--checkpoint", str(ckpt), "--quiet"]) == 0
    assert "AIGC_WEIGHTS=pretrained is ignored here" in capsys.readouterr().err
    assert torch.load(ckpt, weights_only=True)["step"] == 2


def test_a_damaged_or_missing_listed_file_is_an_error_and_an_unlisted_name_says_it_trains(package, tmp_path, capsys):
    path = pretrained.FOLDER / "toy_standard.pt"
    data = bytearray(path.read_bytes())
    data[-200:-100] = bytes(100)  # damaged inside, still a readable zip
    path.write_bytes(bytes(data))
    fresh, opt = make(seed=7)
    with pytest.raises(ValueError, match="is damaged .*SHA-256"):
        fit(fresh, opt, batch, forbidden, 40, checkpoint=tmp_path / "toy_standard.pt", progress=False)
    path.unlink()
    with pytest.raises(ValueError, match="listed in MANIFEST.json but missing"):
        fit(fresh, opt, batch, forbidden, 40, checkpoint=tmp_path / "toy_standard.pt", progress=False)
    fit(fresh, opt, batch, mse, 2, checkpoint=tmp_path / "other_smoke.pt", progress=False)
    assert "no pretrained weights named other_smoke.pt" in capsys.readouterr().out
