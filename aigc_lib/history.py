"""Chapter 00 — a history of generative AI, hands on.

Three parts, in the order the notebook takes them:
1. the timeline and the corrections of common claims, as data with citations;
2. the three generations of text generation: templates, character n-grams, (neural: chapters 01/04);
3. the first image generative model: independent per-pixel Bernoulli, and a discriminative twin.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Unpack

import torch
import torch.nn.functional as F

from aigc_lib.checks import shape_of
from aigc_lib.training import History, RunOptions, fit

# ---------------------------------------------------------------------------------------------
# 1. Timeline and corrections
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Milestone:
    year: int  # first public appearance: the arXiv preprint when there was one, else the publication
    name: str
    authors: str
    venue: str  # where it was published (journal, conference, report)
    citation: str  # title, and an identifier (DOI / arXiv) where one exists
    kind: str  # "foundation" | "text" | "image" | "audio" | "multimodal"
    generative: bool = True  # False for milestones that matter but generate nothing themselves


MILESTONES: tuple[Milestone, ...] = (
    Milestone(
        1948,
        "n-gram text",
        "C. E. Shannon",
        "Bell System Technical Journal 27(3):379-423, 27(4):623-656",
        "A Mathematical Theory of Communication (samples English from letter/word n-grams), "
        "doi:10.1002/j.1538-7305.1948.tb01338.x",
        "text",
    ),
    Milestone(
        1950,
        "Imitation game",
        "A. M. Turing",
        "Mind 59(236):433-460",
        "Computing Machinery and Intelligence, doi:10.1093/mind/LIX.236.433",
        "foundation",
        False,
    ),
    Milestone(
        1966,
        "ELIZA",
        "J. Weizenbaum",
        "Communications of the ACM 9(1):36-45",
        "ELIZA - a computer program for the study of natural language communication between man "
        "and machine, doi:10.1145/365153.365168",
        "text",
    ),
    Milestone(
        1986,
        "Backpropagation",
        "D. E. Rumelhart, G. E. Hinton, R. J. Williams",
        "Nature 323:533-536",
        "Learning representations by back-propagating errors, doi:10.1038/323533a0",
        "foundation",
        False,
    ),
    Milestone(
        1997,
        "LSTM",
        "S. Hochreiter, J. Schmidhuber",
        "Neural Computation 9(8):1735-1780",
        "Long Short-Term Memory, doi:10.1162/neco.1997.9.8.1735",
        "foundation",
        False,
    ),
    Milestone(
        2000,
        "Neural language model",
        "Y. Bengio, R. Ducharme, P. Vincent",
        "NIPS 2000 (Advances in NIPS 13); journal version with C. Jauvin, JMLR 3:1137-1155, 2003",
        "A Neural Probabilistic Language Model",
        "text",
    ),
    Milestone(
        2006,
        "Deep belief nets",
        "G. E. Hinton, S. Osindero, Y.-W. Teh",
        "Neural Computation 18(7):1527-1554",
        "A fast learning algorithm for deep belief nets, doi:10.1162/neco.2006.18.7.1527",
        "foundation",
    ),
    Milestone(
        2006,
        "Deep autoencoders",
        "G. E. Hinton, R. R. Salakhutdinov",
        "Science 313(5786):504-507",
        "Reducing the Dimensionality of Data with Neural Networks, doi:10.1126/science.1127647",
        "foundation",
        False,
    ),
    Milestone(
        2012,
        "AlexNet",
        "A. Krizhevsky, I. Sutskever, G. E. Hinton",
        "NeurIPS 2012",
        "ImageNet Classification with Deep Convolutional Neural Networks",
        "image",
        False,
    ),
    Milestone(
        2013,
        "VAE",
        "D. P. Kingma, M. Welling",
        "ICLR 2014",
        "Auto-Encoding Variational Bayes, arXiv:1312.6114",
        "image",
    ),
    Milestone(
        2014,
        "GAN",
        "I. Goodfellow et al. (Universite de Montreal)",
        "NeurIPS 2014",
        "Generative Adversarial Nets, arXiv:1406.2661",
        "image",
    ),
    Milestone(
        2015,
        "Diffusion (thermodynamics)",
        "J. Sohl-Dickstein, E. Weiss, N. Maheswaranathan, S. Ganguli",
        "ICML 2015",
        "Deep Unsupervised Learning using Nonequilibrium Thermodynamics, arXiv:1503.03585",
        "image",
    ),
    Milestone(
        2016,
        "WaveNet",
        "A. van den Oord et al. (DeepMind)",
        "arXiv preprint, 2016",
        "WaveNet: A Generative Model for Raw Audio, arXiv:1609.03499",
        "audio",
    ),
    Milestone(
        2016,
        "Pix2Pix",
        "P. Isola, J.-Y. Zhu, T. Zhou, A. A. Efros",
        "CVPR 2017",
        "Image-to-Image Translation with Conditional Adversarial Networks, arXiv:1611.07004",
        "image",
    ),
    Milestone(
        2017, "Transformer", "A. Vaswani et al.", "NeurIPS 2017", "Attention Is All You Need, arXiv:1706.03762", "text"
    ),
    Milestone(
        2017,
        "Tacotron",
        "Y. Wang et al. (Google)",
        "Interspeech 2017",
        "Tacotron: Towards End-to-End Speech Synthesis, arXiv:1703.10135",
        "audio",
    ),
    Milestone(
        2018,
        "GPT",
        "A. Radford, K. Narasimhan, T. Salimans, I. Sutskever",
        "OpenAI technical report, 2018",
        "Improving Language Understanding by Generative Pre-Training",
        "text",
    ),
    Milestone(
        2018,
        "BERT",
        "J. Devlin, M.-W. Chang, K. Lee, K. Toutanova",
        "NAACL 2019",
        "BERT: Pre-training of Deep Bidirectional Transformers for Language Understanding, arXiv:1810.04805",
        "text",
        False,
    ),
    Milestone(
        2019,
        "GANSynth",
        "J. Engel et al. (Google Magenta)",
        "ICLR 2019",
        "GANSynth: Adversarial Neural Audio Synthesis, arXiv:1902.08710",
        "audio",
    ),
    Milestone(
        2020,
        "GPT-3",
        "T. Brown et al. (OpenAI)",
        "NeurIPS 2020",
        "Language Models are Few-Shot Learners, arXiv:2005.14165",
        "text",
    ),
    Milestone(
        2020,
        "DDPM",
        "J. Ho, A. Jain, P. Abbeel",
        "NeurIPS 2020",
        "Denoising Diffusion Probabilistic Models, arXiv:2006.11239",
        "image",
    ),
    Milestone(
        2021,
        "CLIP",
        "A. Radford et al. (OpenAI)",
        "ICML 2021",
        "Learning Transferable Visual Models From Natural Language Supervision, arXiv:2103.00020",
        "multimodal",
        False,
    ),
    Milestone(
        2021,
        "DALL-E",
        "A. Ramesh et al. (OpenAI)",
        "ICML 2021",
        "Zero-Shot Text-to-Image Generation, arXiv:2102.12092",
        "multimodal",
    ),
    Milestone(
        2021,
        "Latent diffusion",
        "R. Rombach, A. Blattmann, D. Lorenz, P. Esser, B. Ommer",
        "CVPR 2022",
        "High-Resolution Image Synthesis with Latent Diffusion Models (Stable Diffusion), arXiv:2112.10752",
        "multimodal",
    ),
)

# Midjourney (2022) is a commercial product without a paper; the notebook mentions it in prose only.


@dataclass(frozen=True)
class Correction:
    claim: str  # "a common claim is ..."
    fact: str  # "in fact ..."
    source: str  # the citation that settles it


CORRECTIONS: tuple[Correction, ...] = (
    Correction(
        "Deep belief networks came from a Bell Labs 'Natural Language Processing' paper by Hinton, Bengio and LeCun.",
        "DBNs were introduced by Hinton, Osindero and Teh in 2006; the same year Hinton and Salakhutdinov "
        "showed deep autoencoders in Science.",
        "Neural Computation 18(7):1527-1554 (2006); Science 313(5786):504-507 (2006)",
    ),
    Correction(
        "GANs were launched by NVIDIA.",
        "GANs were introduced by Goodfellow et al. at the Universite de Montreal (NeurIPS 2014). NVIDIA "
        "researchers later built famous GANs (progressive GAN, StyleGAN), but did not invent them.",
        "Goodfellow et al., Generative Adversarial Nets, NeurIPS 2014, arXiv:1406.2661",
    ),
    Correction(
        "GANSynth and DeepDream are GANs from the same lab.",
        "GANSynth is a GAN from Google Magenta (2019). DeepDream (Google, 2015) is not a GAN at all: it "
        "runs gradient ascent on an image to amplify what a trained classifier already detects.",
        "Engel et al., ICLR 2019, arXiv:1902.08710; Mordvintsev, Olah, Tyka, 'Inceptionism', Google "
        "Research Blog, June 2015",
    ),
    Correction(
        "GANs and diffusion models are both based on adversarial training.",
        "Diffusion models have no discriminator: they are trained to denoise (a variational bound / "
        "denoising score matching), which is why their training is stable (chapter 05).",
        "Ho, Jain, Abbeel, NeurIPS 2020, arXiv:2006.11239; Sohl-Dickstein et al., ICML 2015",
    ),
    Correction(
        "VAEs suit text and audio but not images.",
        "VAEs are widely used for images: Kingma and Welling's first experiments were on MNIST and faces, "
        "and the autoencoder inside Stable Diffusion is VAE-shaped: KL-regularised (with a tiny weight), "
        "trained with L1, perceptual and adversarial losses (chapter 03).",
        "Kingma & Welling, arXiv:1312.6114; Rombach et al., CVPR 2022, arXiv:2112.10752",
    ),
    Correction(
        "Text-to-speech turns speech into text.",
        "Text-to-speech (TTS, e.g. Tacotron + a WaveNet vocoder) turns text into audio; the reverse, "
        "speech to text, is automatic speech recognition (ASR).",
        "Wang et al., Interspeech 2017, arXiv:1703.10135; van den Oord et al., arXiv:1609.03499",
    ),
    Correction(
        "Every layer of a generative model is the formula f(x) = sum_i w_i f_i(x).",
        "Each family has its own, precise equations: the RNN/LSTM recurrences (ch. 01), the GAN minimax "
        "game (ch. 02), the ELBO (ch. 03), attention (ch. 04), the diffusion forward/reverse processes "
        "(ch. 05). The course derives and tests each one.",
        "Chapters 01-05 of this course, each with its paper",
    ),
    Correction(
        "Customer-service intent matching, sentiment monitoring and recommendation are AIGC.",
        "They are discriminative tasks (classification, ranking): they choose among existing answers "
        "instead of generating new content.",
        "Bishop, Pattern Recognition and Machine Learning, Springer 2006, section 1.5.4 (generative and "
        "discriminative models)",
    ),
)


def plot_timeline(milestones: Sequence[Milestone] = MILESTONES, *, ax=None, save=None):
    """One row per milestone (oldest on top), its dot at its year, coloured by kind; hollow if not generative."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    colors = {
        "foundation": "#555555",
        "text": "#1f77b4",
        "image": "#d62728",
        "audio": "#2ca02c",
        "multimodal": "#9467bd",
    }
    if ax is None:
        fig, ax = plt.subplots(figsize=(11, 0.28 * len(milestones) + 1.2))
    fig = ax.figure
    for row, m in enumerate(milestones):
        if m.kind not in colors:
            raise ValueError(f"milestones: unknown kind {m.kind!r} for {m.name!r}; expected one of {list(colors)}")
        c = colors[m.kind]
        ax.scatter(m.year, row, s=45, color=c if m.generative else "white", edgecolors=c, linewidths=1.5, zorder=3)
        lead = m.authors.split(",")[0].split(" (")[0].removesuffix(" et al.")
        if "," in m.authors or "et al." in m.authors:
            lead += " et al."
        ax.annotate(
            f"{m.year}  {m.name}  ({lead})",
            (m.year, row),
            xytext=(7, 0),
            textcoords="offset points",
            va="center",
            fontsize=8,
            color=c,
        )
    ax.set_ylim(len(milestones) - 0.5, -0.5)  # oldest on top
    ax.set_yticks([])
    first, last = min(m.year for m in milestones), max(m.year for m in milestones)
    ax.set_xlim(first - 3, last + 22)  # room for the labels right of the newest dots
    ax.set_xticks(range(10 * (first // 10 + 1), last + 1, 10))
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("year")
    ax.set_title("Milestones on the road to generative AI (hollow: important, but not itself generative)")
    ax.legend(
        handles=[Line2D([], [], marker="o", ls="", color=c, label=k) for k, c in colors.items()],
        loc="lower left",
        fontsize=8,
    )
    fig.tight_layout()
    if save is not None:
        fig.savefig(save, dpi=120)
    return fig


# ---------------------------------------------------------------------------------------------
# 2. Text generation: rules, then statistics
# ---------------------------------------------------------------------------------------------

_SLOT = re.compile(r"<(\w+)>")


def expand_template(
    grammar: Mapping[str, Sequence[str]],
    symbol: str = "start",
    *,
    rng: random.Random | None = None,
    max_depth: int = 20,
) -> str:
    """Rule-based generation: rewrite every `<slot>` with a random rule from `grammar[slot]`."""
    if symbol not in grammar:
        raise ValueError(f"symbol: {symbol!r} has no rules; grammar defines {sorted(grammar)}")
    if max_depth <= 0:
        raise RecursionError("expand_template: grammar recursion deeper than max_depth")
    rng = rng or random.Random()
    text = rng.choice(list(grammar[symbol]))
    return _SLOT.sub(lambda m: expand_template(grammar, m.group(1), rng=rng, max_depth=max_depth - 1), text)


def count_bigrams(ids: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """counts[a, b] = number of positions t with ids[t] = a and ids[t+1] = b.  (V, V) int64."""
    _check_ids(ids, vocab_size)
    pair = ids[:-1] * vocab_size + ids[1:]  # one integer per (a, b) pair
    return torch.bincount(pair, minlength=vocab_size * vocab_size).reshape(vocab_size, vocab_size)


def next_char_probs(counts: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Additive (Laplace for alpha=1) smoothing: p(c) = (n_c + alpha) / (sum_c' n_c' + alpha V).  float32."""
    if type(counts) is not torch.Tensor or counts.ndim < 1:
        raise ValueError(f"counts: expected a tensor of shape (..., V), got {type(counts).__name__}")
    if alpha < 0:
        raise ValueError(f"alpha: expected >= 0, got {alpha}")
    c = counts.to(torch.float32) + alpha
    total = c.sum(dim=-1, keepdim=True)
    if bool((total == 0).any()):
        raise ValueError("counts: a context with no counts needs alpha > 0 to define a distribution")
    return c / total


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """p_i = exp(z_i / T) / sum_j exp(z_j / T): divide the LOGITS by T, then softmax (over the last dim)."""
    if type(logits) is not torch.Tensor or not logits.is_floating_point():
        raise ValueError(f"logits: expected a floating-point tensor (..., V), got {type(logits).__name__}")
    if not temperature > 0:
        raise ValueError(f"temperature: expected > 0, got {temperature} (use argmax for T -> 0)")
    return torch.softmax(logits / temperature, dim=-1)


def sample_next(
    logits: torch.Tensor, temperature: float = 1.0, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Sample indices from softmax(logits / T)."""
    probs = apply_temperature(logits, temperature)
    return torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator).reshape(probs.shape[:-1])


def _check_ids(ids: torch.Tensor, vocab_size: int) -> None:
    if type(ids) is not torch.Tensor or ids.dtype != torch.int64 or ids.ndim != 1:
        raise ValueError(f"ids: expected a 1-D int64 tensor, got {shape_of(ids)}")
    if vocab_size < 1:
        raise ValueError(f"vocab_size: expected >= 1, got {vocab_size}")
    if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= vocab_size):
        raise ValueError(f"ids: values must lie in [0, {vocab_size}), got range [{int(ids.min())}, {int(ids.max())}]")


class NGramModel:
    """Character n-gram model with add-alpha smoothing and backoff to the longest seen context.

    p(x_t | x_{t-n+1..t-1}) is estimated from counts. Contexts are coded as base-V integers so that
    counting is one `torch.unique` and lookups are one `searchsorted` for a whole batch.
    """

    def __init__(self, order: int, vocab_size: int, alpha: float = 0.1):
        if order < 1:
            raise ValueError(f"order: expected >= 1 (1 = unigram), got {order}")
        if vocab_size**order >= 2**62:
            raise ValueError(f"order: vocab_size**order must fit in int64, got {vocab_size}**{order}")
        self.order, self.vocab_size, self.alpha = order, vocab_size, alpha
        self.tables: list[tuple[torch.Tensor, torch.Tensor]] = []  # per context length k: (codes, counts (M, V))

    def fit(self, ids: torch.Tensor) -> NGramModel:
        _check_ids(ids, self.vocab_size)
        V = self.vocab_size
        self.tables = []
        for k in range(self.order):  # context length k = 0 .. order-1
            ctx = self._codes(ids, k)[: len(ids) - k]  # (N-k,) context ending before position t
            nxt = ids[k:]
            codes, inverse = torch.unique(ctx, return_inverse=True)
            counts = torch.zeros(len(codes), V, dtype=torch.int32)  # int32: half the memory of int64
            counts.index_put_((inverse, nxt), torch.ones_like(nxt, dtype=torch.int32), accumulate=True)
            self.tables.append((codes, counts))
        return self

    def _codes(self, ids: torch.Tensor, k: int) -> torch.Tensor:
        """code[t] = base-V number of ids[t : t+k] (the k characters before position t+k)."""
        code = torch.zeros(max(len(ids) - k + 1, 0), dtype=torch.int64)
        for j in range(k):
            code = code * self.vocab_size + ids[j : len(ids) - k + 1 + j]
        return code

    def next_probs(self, contexts: torch.Tensor) -> torch.Tensor:
        """Distribution of the next character for each row of contexts (B, order-1).  (B, V) float32."""
        if not self.tables:
            raise RuntimeError("NGramModel: call fit() first")
        B = contexts.shape[0]
        counts = self.tables[0][1].expand(B, -1).clone()  # unigram fallback
        for k in range(1, self.order):
            codes, table = self.tables[k]
            ctx = contexts[:, contexts.shape[1] - k :]
            code = torch.zeros(B, dtype=torch.int64)
            for j in range(k):
                code = code * self.vocab_size + ctx[:, j]
            pos = torch.searchsorted(codes, code).clamp_max(len(codes) - 1)
            found = codes[pos] == code
            counts[found] = table[pos[found]]  # longer seen context wins (backoff)
        return next_char_probs(counts, self.alpha)

    def nats_per_char(self, ids: torch.Tensor, batch: int = 65_536) -> float:
        """Average negative log-likelihood of ids[order-1:] given their contexts, in nats."""
        _check_ids(ids, self.vocab_size)
        n = self.order - 1
        if len(ids) <= n:
            raise ValueError(f"ids: need more than order-1 = {n} characters, got {len(ids)}")
        windows = ids.unfold(0, n + 1, 1)  # (N-n, n+1)
        total = 0.0
        for s in range(0, len(windows), batch):
            w = windows[s : s + batch]
            p = self.next_probs(w[:, :n])
            total += -torch.log(p.gather(1, w[:, n:])).sum().item()
        return total / len(windows)

    def generate(
        self, prompt: torch.Tensor, length: int, temperature: float = 1.0, *, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Extend `prompt` (1-D ids) by `length` sampled characters."""
        n = self.order - 1
        out = prompt.tolist()
        if len(out) < n:
            raise ValueError(f"prompt: need at least order-1 = {n} characters, got {len(out)}")
        for _ in range(length):
            ctx = torch.tensor([out[len(out) - n :]], dtype=torch.int64) if n else torch.zeros(1, 0, dtype=torch.int64)
            probs = self.next_probs(ctx)
            # temperature on log-probabilities = temperature on logits (they differ by a constant)
            out.append(int(sample_next(probs.log(), temperature, generator=generator)))
        return torch.tensor(out, dtype=torch.int64)


# ---------------------------------------------------------------------------------------------
# 3. The first image model: independent pixels (and its discriminative twin)
# ---------------------------------------------------------------------------------------------


def fit_pixel_model(images: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Bernoulli per pixel, p_ij = (sum_n x_nij + alpha) / (N + 2 alpha); same dtype as images.

    images: (N, ...) with values in [0, 1]; returns the per-pixel probabilities (...).
    """
    if type(images) is not torch.Tensor or not images.is_floating_point() or images.ndim < 2:
        raise ValueError(f"images: expected a float tensor (N, ...), got {type(images).__name__}")
    if alpha < 0:
        raise ValueError(f"alpha: expected >= 0, got {alpha}")
    return (images.sum(dim=0) + alpha) / (images.shape[0] + 2 * alpha)


class PixelBayes:
    """Class-conditional independent-pixel model p(x|y) = prod_ij Bernoulli(x_ij; p_yij), p(y) by counts.

    Generative: it can sample new digits. Used as a classifier through Bayes' rule it is naive Bayes.
    """

    def __init__(self, num_classes: int = 10, alpha: float = 1.0):
        self.num_classes, self.alpha = num_classes, alpha

    def fit(self, images: torch.Tensor, labels: torch.Tensor) -> PixelBayes:
        if len(images) != len(labels):
            raise ValueError(f"labels: expected {len(images)} labels for {len(images)} images, got {len(labels)}")
        x = (images.flatten(1) > 0.5).float()  # binarise: a Bernoulli models 0/1 pixels
        self.probs = torch.stack([fit_pixel_model(x[labels == c], self.alpha) for c in range(self.num_classes)])
        self.log_prior = torch.log(torch.bincount(labels, minlength=self.num_classes).float() / len(labels))
        self.shape = images.shape[1:]
        return self

    def log_joint(self, images: torch.Tensor) -> torch.Tensor:
        """log p(x, y) for every class: (N, C)."""
        x = (images.flatten(1) > 0.5).float()
        logp, log1mp = self.probs.log(), torch.log1p(-self.probs)  # (C, D)
        return x @ logp.T + (1 - x) @ log1mp.T + self.log_prior

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        return self.log_joint(images).argmax(dim=1)

    def sample(self, labels: torch.Tensor, *, generator: torch.Generator | None = None) -> torch.Tensor:
        """One independent Bernoulli draw per pixel: (N, *shape)."""
        p = self.probs[labels]
        return torch.bernoulli(p, generator=generator).reshape(len(labels), *self.shape)


def train_logistic_regression(
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    steps: int = 300,
    lr: float = 0.5,
    weight_decay: float = 1e-4,
    num_classes: int = 10,
    **run: Unpack[RunOptions],
) -> tuple[torch.nn.Linear, History]:
    """Discriminative twin: softmax regression p(y|x) = softmax(W x + b), full-batch SGD on cross-entropy.
    `run`: fit's run options (log_every defaults to steps // 10, at most 50)."""
    if len(images) != len(labels):
        raise ValueError(f"labels: expected {len(images)} labels for {len(images)} images, got {len(labels)}")
    model = torch.nn.Linear(images[0].numel(), num_classes)
    opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=weight_decay)
    batch = (images.flatten(1), labels)
    run.setdefault("log_every", max(1, min(50, steps // 10)))
    run.setdefault("desc", "logistic regression")
    history = fit(model, opt, lambda step: batch, lambda m, b: F.cross_entropy(m(b[0]), b[1]), steps, **run)
    return model, history
