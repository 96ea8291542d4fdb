"""Chapter 06 exercises: visible test cases (hidden ones: `aigc_lib.exercises.hidden.ch06`)."""

from __future__ import annotations

import torch

from aigc_lib import clip
from aigc_lib.exercises.core import Case, Exercise


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def logits_case(B: int, seed: int, scale: float = 14.3, dtype=torch.float32, noise: float = 0.8) -> dict:
    """A batch's logits as the model makes them: scale × cosines of random unit vectors, the matching
    pairs (the diagonal) pulled closer. Not symmetric, so rows and columns give different losses."""
    g = _gen(seed)
    img = torch.nn.functional.normalize(torch.randn(B, 8, generator=g, dtype=dtype), dim=-1)
    txt = torch.nn.functional.normalize(img + noise * torch.randn(B, 8, generator=g, dtype=dtype), dim=-1)
    return {"logits_per_image": scale * img @ txt.T}


def probs_case(N: int, K: int, D: int, seed: int, scale: float = 20.0, dtype=torch.float32) -> dict:
    """Raw (not unit-length) embeddings: image i near class i % K, each class vector of its own length."""
    g = _gen(seed)
    classes = torch.randn(K, D, generator=g, dtype=dtype) * torch.linspace(0.5, 3.0, K, dtype=dtype)[:, None]
    images = classes[torch.arange(N) % K] / classes[torch.arange(N) % K].norm(dim=-1, keepdim=True)
    images = (images + 0.7 * torch.randn(N, D, generator=g, dtype=dtype)) * torch.linspace(0.2, 5.0, N, dtype=dtype)[
        :, None
    ]
    return {"image_embeddings": images, "class_embeddings": classes, "scale": scale}


def on_its_class(case: dict) -> dict:
    """Image 0 along class 0: its cosine is 1, so scale x cosine = scale (e^100 overflows float32)."""
    images = case["image_embeddings"].clone()
    images[0] = 4 * case["class_embeddings"][0]
    return {**case, "image_embeddings": images}


def ensemble_case(K: int, P: int, D: int, seed: int, dtype=torch.float32) -> dict:
    """Prompt embeddings (K, P, D) of different lengths: the mean of raw vectors leans to the longest."""
    g = _gen(seed)
    lengths = torch.rand(K, P, 1, generator=g, dtype=dtype) * 4 + 0.1
    return {"prompt_embeddings": torch.randn(K, P, D, generator=g, dtype=dtype) * lengths}


def recall_case(nq: int, nc: int, k: int, seed: int, dtype=torch.float32, ties: bool = False) -> dict:
    g = _gen(seed)
    sim = torch.randn(nq, nc, generator=g, dtype=dtype)
    sim[torch.arange(nq), torch.arange(nq)] += 1.0  # matches tend to rank high, not always first
    if ties:  # a few candidates exactly as similar as the match: a tie counts against it
        sim[torch.arange(0, nq, 2), (torch.arange(0, nq, 2) + 1) % nc] = sim[
            torch.arange(0, nq, 2), torch.arange(0, nq, 2)
        ]
    return {"sim": sim, "k": k}


EXERCISES = (
    Exercise(
        key="06.clip_loss",
        function="clip_loss",
        nudge="Two cross-entropies, one per direction: rows are images choosing among captions, columns captions "
        "choosing among images. The right answer for row i is column i. A large logit must not overflow exp.",
        reference=clip.clip_loss,
        hint="targets = torch.arange(B); return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, "
        "targets)) / 2 — cross_entropy takes the mean over the batch and computes log-softmax stably "
        "(subtracting each row's maximum), which a hand-written exp(...).sum().log() does not.",
        cases=(
            Case("all logits equal: the loss is ln B (chance)", lambda: {"logits_per_image": torch.zeros(4, 4)}),
            Case("B=5, a model's logits (not symmetric)", lambda: logits_case(5, 0)),
            Case(
                "a confident model, scale 100: logits near 100 (exp overflows float32)",
                lambda: logits_case(6, 100, scale=100.0, noise=0.05),
            ),
        ),
    ),
    Exercise(
        key="06.zero_shot_probs",
        function="zero_shot_probs",
        nudge="CLIP compares directions, not lengths: what must you do to both sets of embeddings first? Then "
        "which axis of the (N, K) matrix is the probability over? And where does the scale go?",
        reference=clip.zero_shot_probs,
        hint="img = F.normalize(image_embeddings, dim=-1); w = F.normalize(class_embeddings, dim=-1); "
        "return torch.softmax(scale * img @ w.T, dim=-1) — each image's probabilities over the K classes sum to 1.",
        cases=(
            Case("scale 1, raw embeddings", lambda: probs_case(3, 2, 4, 1, scale=1.0)),
            Case("6 images, 4 classes: raw vectors of different lengths", lambda: probs_case(6, 4, 8, 2)),
            Case(
                "scale 100 (CLIP's maximum), an image exactly on its class: a logit of 100",
                lambda: on_its_class(probs_case(5, 3, 8, 3, scale=100.0)),
            ),
        ),
    ),
    Exercise(
        key="06.ensemble_prompts",
        function="ensemble_prompts",
        nudge="Each prompt should get an equal say, whatever the length of its embedding; and a class embedding is a "
        "direction in the joint space. Which axis holds the prompts?",
        reference=clip.ensemble_prompts,
        hint="e = F.normalize(prompt_embeddings, dim=-1); return F.normalize(e.mean(dim=1), dim=-1): normalise each "
        "prompt's embedding, average the P prompts of each class, normalise the average.",
        cases=(
            Case(
                "one prompt per class: the class embedding is that prompt's direction",
                lambda: ensemble_case(3, 1, 4, 4),
            ),
            Case("2 classes x 3 prompts of different lengths", lambda: ensemble_case(2, 3, 4, 5)),
            Case("10 classes x 6 prompts, D=16", lambda: ensemble_case(10, 6, 16, 6)),
        ),
    ),
    Exercise(
        key="06.recall_at_k",
        function="recall_at_k",
        nudge="Rows are queries, and query i's match is column i. Count how many candidates are at least as similar "
        "as the match (other than the match itself): that is its rank, starting at 0.",
        reference=clip.recall_at_k,
        hint="match = sim.diagonal()[:, None] (or sim[i, i] per row); rank = (sim >= match).sum(dim=1) - 1 (a tie "
        "counts against the match); return float((rank < k).float().mean()) — a Python float.",
        cases=(
            Case(
                "3 queries: ranks 0, 1, 2",
                lambda: {"sim": torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.4, 0.1], [0.3, 0.2, 0.1]]), "k": 2},
            ),
            Case("5 queries among 12 candidates, recall@3", lambda: recall_case(5, 12, 3, 8)),
            Case("every score equal: every match ties, recall 0", lambda: {"sim": torch.ones(5, 5), "k": 2}),
        ),
    ),
)
