"""Tiny, offline, deterministic text encoders and tokenizers for the text-to-image and video test pipelines.

The tokenizers are built in code over a small fixed vocabulary: the words of :data:`PROMPT_WORDS` whole, plus single
characters so that any other word still tokenises. They are the ``tokenizers``-backed classes of ``transformers``
(``T5Tokenizer``, alias ``T5TokenizerFast``; ``CLIPTokenizer``, alias ``CLIPTokenizerFast``), so ``save_pretrained``
writes a ``tokenizer.json`` that ``from_pretrained`` reads back offline.

* T5 (PixArt, SD3, Flux, Wan): a Unigram model over the words and ASCII letters, digits and some punctuation (any
  other character becomes ``<unk>``); cased, as T5 is; ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2, ``</s>`` appended.
* CLIP (SD3, Flux): a lower-casing byte-level BPE model over all 256 bytes, with merges that join each word; no text
  is unknown, which matters because CLIP's unknown token is ``<|endoftext|>``, where the encoder pools.
  ``<|startoftext|>`` = 0 and ``<|endoftext|>`` = 1 (also padding), ``<|startoftext|> ... <|endoftext|>`` around each
  prompt; the encoder's ``eos_token_id`` is 1, so its pooled output is taken at the first ``<|endoftext|>``.
"""

from __future__ import annotations

import string
from collections import Counter

import torch
from tokenizers import pre_tokenizers
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
    UMT5Config,
    UMT5EncoderModel,
)

PROMPT_WORDS: tuple[str, ...] = (
    "a",
    "an",
    "the",
    "of",
    "on",
    "with",
    "photo",
    "painting",
    "digit",
    "number",
    "red",
    "blue",
    "green",
    "black",
    "white",
    "small",
    "large",
    "bad",
    "quality",
    "blurry",
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)
"""Words that tokenise to a single token in both tokenizers."""

_T5_CHARACTERS = string.ascii_letters + string.digits + ".,!?'-"

T5_MODEL_MAX_LENGTH = 32
"""``model_max_length`` of the T5 tokenizer (the pipelines pad T5 to their own ``max_sequence_length``)."""

CLIP_MAX_LENGTH = 16
"""``model_max_length`` of the CLIP tokenizers and position count of the CLIP encoders; SD3 and Flux pad to it."""

_CLIP_BOS, _CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
_CLIP_BOS_ID, _CLIP_EOS_ID = 0, 1


def build_t5_tokenizer() -> T5Tokenizer:
    """Builds a T5 tokenizer over :data:`PROMPT_WORDS` and single characters.

    Returns:
        The tokenizer, with ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2 and no sentinel tokens.
    """
    # Unigram picks the segmentation with the highest total score: whole words beat their spelled-out characters.
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    pieces += [(f"\u2581{word}", -1.0) for word in PROMPT_WORDS]
    pieces += [(character, -5.0) for character in _T5_CHARACTERS]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=T5_MODEL_MAX_LENGTH)


def _merge_pair(symbols: list[str], pair: tuple[str, str]) -> list[str]:
    """``symbols`` with every adjacent occurrence of ``pair``, left to right, joined into one symbol."""
    merged: list[str] = []
    index = 0
    while index < len(symbols):
        if index + 1 < len(symbols) and (symbols[index], symbols[index + 1]) == pair:
            merged.append(symbols[index] + symbols[index + 1])
            index += 2
        else:
            merged.append(symbols[index])
            index += 1
    return merged


def _learn_word_merges(words: tuple[str, ...]) -> list[tuple[str, str]]:
    """Learns BPE merges until every word is one token: the most frequent pair first, ties in lexical order.

    (``tokenizers``' own ``BpeTrainer`` breaks ties in no fixed order, so its merges differ from run to run.)
    """
    segmented = [[*word[:-1], word[-1] + "</w>"] for word in words]
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for symbols in segmented for pair in zip(symbols, symbols[1:], strict=False))
        if not counts:
            return merges
        pair = min(counts, key=lambda candidate: (-counts[candidate], candidate))
        merges.append(pair)
        segmented = [_merge_pair(symbols, pair) for symbols in segmented]


def build_clip_tokenizer() -> CLIPTokenizer:
    """Builds a CLIP tokenizer over :data:`PROMPT_WORDS` and single bytes.

    Returns:
        The tokenizer, ``model_max_length`` = :data:`CLIP_MAX_LENGTH`, ``<|endoftext|>`` as padding and unknown token.
    """
    vocab = {_CLIP_BOS: _CLIP_BOS_ID, _CLIP_EOS: _CLIP_EOS_ID}
    for character in sorted(pre_tokenizers.ByteLevel.alphabet()):  # every byte: no text is unknown
        vocab.setdefault(character, len(vocab))
        vocab.setdefault(character + "</w>", len(vocab))
    merges = _learn_word_merges(PROMPT_WORDS)
    for left, right in merges:
        vocab.setdefault(left + right, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_MAX_LENGTH)


def build_t5_encoder(vocab_size: int, d_model: int, seed: int, umt5: bool = False) -> torch.nn.Module:
    """Builds a one-layer T5 (or UMT5, as Wan uses) encoder with random weights.

    Args:
        vocab_size: Size of the tokenizer's vocabulary.
        d_model: Width of the output embeddings (the transformer's text dimension).
        seed: Seed of the weights.
        umt5: Build a ``UMT5EncoderModel`` instead of a ``T5EncoderModel``.

    Returns:
        The encoder in eval mode, dropout off.
    """
    config_cls, model_cls = (UMT5Config, UMT5EncoderModel) if umt5 else (T5Config, T5EncoderModel)
    config = config_cls(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=37,
        num_layers=1,
        num_heads=4,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=32,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    return model_cls(config).eval()


def build_clip_encoder(
    vocab_size: int, hidden_size: int, seed: int, projection_dim: int | None = None
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """Builds a two-layer CLIP text encoder with random weights.

    Two layers, because SD3 takes the penultimate hidden states.

    Args:
        vocab_size: Size of the tokenizer's vocabulary.
        hidden_size: Width of the hidden states (Flux's pooled embedding is the pooled output, of this width).
        seed: Seed of the weights.
        projection_dim: Width of the projected pooled embedding: build a ``CLIPTextModelWithProjection`` (as SD3
            uses) when given, a ``CLIPTextModel`` (as Flux uses) otherwise.

    Returns:
        The encoder in eval mode.
    """
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=37,
        projection_dim=projection_dim if projection_dim is not None else hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=CLIP_MAX_LENGTH,
        hidden_act="gelu",
        bos_token_id=_CLIP_BOS_ID,
        eos_token_id=_CLIP_EOS_ID,
        pad_token_id=_CLIP_EOS_ID,
    )
    torch.manual_seed(seed)
    model_cls = CLIPTextModelWithProjection if projection_dim is not None else CLIPTextModel
    return model_cls(config).eval()
