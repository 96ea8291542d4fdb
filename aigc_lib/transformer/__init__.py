"""Chapter 04 — Transformers: attention from the formula, multi-head attention, a char GPT with a KV
cache, and the encoder–decoder with cross-attention.

The package face: `from aigc_lib import transformer as tr` gives every name below, whichever file
defines it.

    attention.py  the attention formulas, `MultiHeadAttention` (self, causal, cached and cross-attention),
                  the pre-LN `Block` and the `EncoderDecoderBlock`: the parts later chapters reuse
                  (a text encoder, cross-attention in a text-to-image model)
    gpt.py        the decoder-only char GPT with its KV cache, `train_gpt`, `evaluate_loss`
                  (read top to bottom, like nanoGPT's model.py)
    seq2seq.py    the encoder–decoder, the digit-reversal task and `train_seq2seq`

Sampling is shared machinery (`aigc_lib.generation.generate`): a GPT follows the same
`model(idx, state) -> (logits, state)` protocol as chapter 01's LSTM.
"""

from aigc_lib.transformer.attention import (
    Block,
    EncoderDecoderBlock,
    MultiHeadAttention,
    attention,
    attention_weights,
    causal_mask,
    init_normal_,
    merge_heads,
    sinusoidal_positions,
    split_heads,
)
from aigc_lib.transformer.gpt import (
    GPT,
    GPTConfig,
    KVCache,
    attention_maps,
    evaluate_loss,
    generate_without_cache,
    random_windows,
    train_gpt,
)
from aigc_lib.transformer.seq2seq import (
    BOS,
    EOS,
    PAD,
    Seq2SeqConfig,
    Seq2SeqTransformer,
    reversal_batch,
    train_seq2seq,
)

__all__ = [
    "BOS",
    "EOS",
    "GPT",
    "PAD",
    "Block",
    "EncoderDecoderBlock",
    "GPTConfig",
    "KVCache",
    "MultiHeadAttention",
    "Seq2SeqConfig",
    "Seq2SeqTransformer",
    "attention",
    "attention_maps",
    "attention_weights",
    "causal_mask",
    "evaluate_loss",
    "generate_without_cache",
    "init_normal_",
    "merge_heads",
    "random_windows",
    "reversal_batch",
    "sinusoidal_positions",
    "split_heads",
    "train_gpt",
    "train_seq2seq",
]
