"""Chapter 06 hidden cases: never shown in the student edition, run by the grader (and CI)."""

from __future__ import annotations

import torch

from aigc_lib.exercises.ch06 import ensemble_case, logits_case, probs_case, recall_case
from aigc_lib.exercises.core import Case

HIDDEN = {
    "06.clip_loss": (
        Case(
            "hidden: a confidently wrong model, scale 100 (exp overflows float32)",
            lambda: {"logits_per_image": logits_case(6, 110, scale=100.0, noise=0.05)["logits_per_image"].roll(1, 1)},
        ),
        Case("hidden: float64, a larger batch", lambda: logits_case(16, 101, dtype=torch.float64)),
    ),
    "06.zero_shot_probs": (
        Case("hidden: float64, 1 class (probability 1)", lambda: probs_case(4, 1, 6, 102, dtype=torch.float64)),
        Case(
            "hidden: 10 classes, 50 images, scale as a tensor",
            lambda: {**probs_case(50, 10, 16, 103), "scale": torch.tensor(33.0)},
        ),
    ),
    "06.ensemble_prompts": (
        Case("hidden: float64, several prompts per class", lambda: ensemble_case(5, 4, 8, 104, dtype=torch.float64)),
        Case("hidden: one class, many prompts", lambda: ensemble_case(1, 30, 12, 105)),
    ),
    "06.recall_at_k": (
        Case(
            "hidden: k = every candidate, the match least similar",
            lambda: {"sim": torch.rand(3, 5, generator=torch.Generator().manual_seed(0)) - 2 * torch.eye(3, 5), "k": 5},
        ),
        Case("hidden: ties, float64, recall@2", lambda: recall_case(10, 10, 2, 107, dtype=torch.float64, ties=True)),
    ),
}
