"""Decoding strategies as pure functions, and the parameters that choose between them."""

from seq2seq.decoding.functions import (
    beam_candidates,
    block_repeated_ngrams,
    filter_logits,
    forbid,
    greedy,
    length_penalty,
    sample,
)
from seq2seq.decoding.params import DecodeParams, FinishReason, Strategy, source_length_cap

__all__ = [
    "DecodeParams",
    "FinishReason",
    "Strategy",
    "beam_candidates",
    "block_repeated_ngrams",
    "filter_logits",
    "forbid",
    "greedy",
    "length_penalty",
    "sample",
    "source_length_cap",
]
