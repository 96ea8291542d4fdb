"""Chapter 05 — diffusion models: DDPM, DDIM and classifier-free guidance, equation by equation.

`from aigc_lib import diffusion as dm` gives every name below, whichever file defines it. Read the
files in this order; each opens with the index of the equations it implements:

    schedule.py  noise schedules (linear, cosine), the forward process q(x_t | x_0) and its posterior,
                 x̂_0 / ε̂ / v from the network's output, the loss L_simple       Ho et al. 2020 eq. 2-15
    sampling.py  the reverse steps (DDPM ancestral, DDIM), classifier-free guidance, `sample`
                                                                   Song et al. 2021 eq. 12-16, Ho & Salimans
    unet.py      the timestep embedding and the U-Net ε_θ(x_t, t, y) (no schedule inside: reusable)
    likelihood.py  the variational bound in bits per dimension (every term of Ho et al. eq. 5)
    train.py     the EMA of the weights and `train_diffusion` on the course's loop `training.fit`
    prompts.py   "a seven", "数字7" -> 7, the label the class-conditional U-Net is asked for

Images live in [−1, 1]; `to_unit` maps them to [0, 1] for plots and the metrics. The step functions
agree with the `diffusers` library's DDPMScheduler and DDIMScheduler (tests/test_diffusion.py).
"""

from aigc_lib.diffusion.likelihood import BoundTerms, discretized_gaussian_nll, vlb_bits_per_dim
from aigc_lib.diffusion.prompts import PROMPT_FORMS, prompt_to_label
from aigc_lib.diffusion.sampling import (
    SAMPLERS,
    caption_guidance_batch,
    ddim_step,
    ddim_timesteps,
    ddpm_step,
    guided_eps,
    sample,
    to_unit,
)
from aigc_lib.diffusion.schedule import (
    PREDICTIONS,
    NoiseSchedule,
    cosine_schedule,
    diffusion_loss,
    linear_schedule,
    posterior_mean_variance,
    predict_eps,
    predict_x0,
    q_sample,
    q_step,
    v_target,
)
from aigc_lib.diffusion.train import EMA, train_diffusion
from aigc_lib.diffusion.unet import (
    CrossAttention,
    ResBlock,
    SelfAttention,
    UNet,
    UNetConfig,
    masked_attention,
    timestep_embedding,
)

__all__ = [
    "CrossAttention",
    "EMA",
    "BoundTerms",
    "PREDICTIONS",
    "PROMPT_FORMS",
    "SAMPLERS",
    "NoiseSchedule",
    "ResBlock",
    "SelfAttention",
    "UNet",
    "UNetConfig",
    "caption_guidance_batch",
    "cosine_schedule",
    "ddim_step",
    "ddim_timesteps",
    "ddpm_step",
    "diffusion_loss",
    "discretized_gaussian_nll",
    "guided_eps",
    "masked_attention",
    "linear_schedule",
    "posterior_mean_variance",
    "predict_eps",
    "predict_x0",
    "prompt_to_label",
    "q_sample",
    "q_step",
    "sample",
    "timestep_embedding",
    "to_unit",
    "train_diffusion",
    "v_target",
    "vlb_bits_per_dim",
]
