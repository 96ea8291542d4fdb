"""Recipes: every chapter's reusable trained model defined once, as data, and trained the way the
notebooks trained it before (same weights, same checkpoint names)."""

import pytest
import torch

from aigc_lib import data, diffusion, gan, recipes, vae

BUDGETS = ("smoke", "standard", "full")


@pytest.fixture(scope="module")
def train():
    return data.mnist5k("train")


@pytest.fixture(scope="module")
def images(train):
    return train.images


@pytest.mark.parametrize("name", sorted(recipes.all_recipes()))
def test_every_recipe_has_sizes_and_a_checkpoint_per_budget(name):
    recipe = recipes.get(name)
    assert recipe.name == name and recipe.summary
    paths = {recipe.checkpoint_for(b) for b in BUDGETS}
    assert len(paths) == len(BUDGETS) and all(p.startswith("checkpoints/") and p.endswith(".pt") for p in paths)


def test_unknown_recipe_and_budget_are_clear_errors():
    with pytest.raises(ValueError, match="recipe: unknown 'nope'; the course has .*02.dcgan"):
        recipes.get("nope")
    with pytest.raises(ValueError, match="budget: recipe '02.dcgan' has sizes for"):
        recipes.get("02.dcgan").sizes_for("huge")


def test_checkpoint_names_are_the_ones_the_notebooks_write():
    # a learner's finished chapter-02 run must still load in chapters 03 and 05; the conv VAE's name changed
    # with its data (binarised digits), so a checkpoint trained on grey levels is not loaded by mistake
    assert recipes.get("02.dcgan").checkpoint_for("standard") == "checkpoints/02_dcgan_standard_32.pt"
    assert recipes.get("02.dcgan").checkpoint_for("smoke") == "checkpoints/02_dcgan_smoke_8.pt"
    assert recipes.get("03.conv_vae").checkpoint_for("standard") == "checkpoints/03_vae_conv_bin_standard.pt"


def test_dcgan_recipe_trains_as_chapter_02_did_and_resumes(train, images, tmp_path):
    ckpt = tmp_path / "dcgan.pt"
    G, D, run = recipes.get("02.dcgan").run(train, budget="smoke", checkpoint=ckpt, progress=False)
    config = gan.DCGANConfig(z_dim=64, ngf=8, ndf=8)  # chapter 02's cell, as it was written before
    torch.manual_seed(0)
    G_ref, D_ref = gan.DCGANGenerator(config), gan.DCGANDiscriminator(config)
    gan.train_gan(G_ref, D_ref, images * 2 - 1, 10, batch_size=64, progress=False)
    for a, b in zip(
        [*G.state_dict().values(), *D.state_dict().values()],
        [*G_ref.state_dict().values(), *D_ref.state_dict().values()],
        strict=True,
    ):
        assert torch.equal(a, b)
    assert len(run.history) == 10
    G2, _, _ = recipes.get("02.dcgan").run(train, budget="smoke", checkpoint=ckpt, progress=False)  # loads
    assert all(torch.equal(a, b) for a, b in zip(G.state_dict().values(), G2.state_dict().values(), strict=True))


def test_conv_vae_recipe_trains_as_chapter_03_does(train, images, tmp_path):
    model, history = recipes.get("03.conv_vae").run(train, budget="smoke", checkpoint=tmp_path / "v.pt", progress=False)
    torch.manual_seed(0)
    ref = vae.VAE(vae.VAEConfig(kind="conv", latent_dim=20))
    vae.train_vae(ref, images, len(images) // 128, binarize=True, progress=False)
    assert len(history) == len(images) // 128
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), ref.state_dict().values(), strict=True))


# --------------------------------------------------------------------------- chapter 05's U-Net

UNET_SIZES = {  # what solutions/05_diffusion.ipynb typed before the recipe: budget(smoke=8, standard=12, full=64), ...
    "smoke": {"base": 8, "steps": 20, "batch_size": 32},
    "standard": {"base": 12, "steps": 3_000, "batch_size": 32},
    "full": {"base": 64, "steps": 20_000, "batch_size": 32},
}


@pytest.mark.parametrize("budget", BUDGETS)
def test_unet_recipe_has_chapter_05s_sizes_and_checkpoint_names(budget):
    recipe = recipes.get("05.unet")
    assert recipe.sizes_for(budget) == UNET_SIZES[budget]
    # the name chapter 05 wrote its checkpoints under: f"checkpoints/05_unet_{rt.budget}_{base}.pt"
    assert recipe.checkpoint_for(budget) == f"checkpoints/05_unet_{budget}_{UNET_SIZES[budget]['base']}.pt"


def test_unet_recipe_trains_as_chapter_05_did_and_loads_its_checkpoint(tmp_path):
    mnist = data.mnist5k("train")
    ckpt = tmp_path / "unet.pt"
    unet, history, ema = recipes.get("05.unet").run(mnist, budget="smoke", checkpoint=ckpt, progress=False)
    # chapter 05's cell, as it was written before
    config = diffusion.UNetConfig(base=8, mults=(1, 2, 2), groups=8 // 4, n_classes=10, upsample="transpose")
    torch.manual_seed(0)
    ref = diffusion.UNet(config)
    ref_history, ref_ema = diffusion.train_diffusion(
        ref,
        mnist.images,
        20,
        schedule=diffusion.linear_schedule(T=1000),
        labels=mnist.labels,
        p_uncond=0.3,
        batch_size=32,
        lr=1.5e-3,
        ema_decay=0.999,
        progress=False,
    )
    assert unet.config == config and history.steps == ref_history.steps and history["loss"] == ref_history["loss"]
    for a, b in zip(
        [*unet.state_dict().values(), *ema.model.state_dict().values()],
        [*ref.state_dict().values(), *ref_ema.model.state_dict().values()],
        strict=True,
    ):
        assert torch.equal(a, b)
    _, _, loaded = recipes.get("05.unet").run(mnist, budget="smoke", checkpoint=ckpt, progress=False)  # loads
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.model.state_dict().values(), ema.model.state_dict().values(), strict=True)
    )


def test_char_gpt_recipe_is_chapter_04s_gpt_and_checkpoint():
    from aigc_lib import transformer as tr
    from aigc_lib.recipes import ch04

    assert ch04.VOCAB == data.CharTokenizer.from_text(data.shakespeare_text("all")).vocab_size
    recipe = recipes.get("04.char_gpt")
    sizes = recipe.sizes_for("standard")
    gpt = tr.GPT(ch04.gpt_config(3, 96))
    assert sizes["steps"] == max(10, int(3.65e12 // (3 * gpt.flops_per_token() * 12 * 64)))  # the notebook's count
    assert recipe.checkpoint_for("standard") == "checkpoints/04_gpt_standard_3x96_ctx64.pt"
