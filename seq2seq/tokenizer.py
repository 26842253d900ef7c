"""SentencePiece tokenizer with the special ids every model of this project relies on.

Every tokenizer the pipeline trains has ``<pad>`` = 0, ``<unk>`` = 1, ``<s>`` (BOS) = 2 and
``</s>`` (EOS) = 3; :meth:`Tokenizer.load` checks this, so a model can never be paired
with a tokenizer whose ids mean something else.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Iterable
from pathlib import Path

import sentencepiece as spm

from seq2seq.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID

UNKNOWN_PIECE_LOGPROB = -20.0  # below any trained piece's score
SENTENCE_ENDS = ".!?;:…。！？\"'»”)]"


def end_sentence(text: str, mark: str | None) -> str:
    """``text`` ended with ``mark`` unless it already ends a sentence (or ``mark`` is None).

    A model trained on sources that nearly all end with a period learns to end its output
    after translating it; given a source without one, it may never end (it runs into the
    length cap). Models like that declare the mark in their manifest
    (``preprocessing.end_mark``) and get it added to such sources.
    """
    if mark is None or not text.strip() or ends_sentence(text):
        return text
    return text.rstrip() + mark


def ends_sentence(text: str) -> bool:
    stripped = text.rstrip()
    return bool(stripped) and stripped[-1] in SENTENCE_ENDS


def seed_sampling(seed: int) -> None:
    """Seed SentencePiece's generator (one for the process), so that drawn segmentations repeat."""
    spm.set_random_generator_seed(seed)


class TokenizerError(ValueError):
    pass


class Tokenizer:
    def __init__(self, processor: spm.SentencePieceProcessor, path: Path | None = None) -> None:
        self.sp = processor
        self.path = path
        expected = {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID}
        actual = {
            "pad": processor.pad_id(),
            "unk": processor.unk_id(),
            "bos": processor.bos_id(),
            "eos": processor.eos_id(),
        }
        if actual != expected:
            raise TokenizerError(f"tokenizer {path or ''} has special ids {actual}, expected {expected}")

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        path = Path(path)
        processor = spm.SentencePieceProcessor()
        try:
            processor.Load(str(path))
        except (OSError, RuntimeError) as exc:
            raise TokenizerError(f"cannot load tokenizer {path}: {exc}") from exc
        return cls(processor, path)

    @classmethod
    def train(
        cls,
        sentences: Iterable[str],
        model_prefix: str | Path,
        vocab_size: int,
        model_type: str = "unigram",
        character_coverage: float = 1.0,
    ) -> Tokenizer:
        """Train a SentencePiece model on ``sentences`` and write ``<model_prefix>.model``."""
        model = io.BytesIO()
        spm.SentencePieceTrainer.Train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=character_coverage,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            hard_vocab_limit=False,
            num_threads=1,
            minloglevel=2,
        )
        path = Path(f"{model_prefix}.model")
        path.write_bytes(model.getvalue())
        return cls.load(path)

    @property
    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def encode(self, text: str) -> list[int]:
        """Text -> piece ids, without BOS/EOS."""
        return self.sp.EncodeAsIds(text)

    def sample_encode(self, text: str, alpha: float) -> list[int]:
        """One segmentation of ``text`` drawn from the unigram model (subword regularisation,
        Kudo 2018): the smaller ``alpha``, the further from the best one. Training on drawn
        segmentations teaches a model that one word can come in several pieces, as it does in
        paraphrases. Draws follow :func:`seed_sampling`."""
        return self.sp.Encode(text, enable_sampling=True, alpha=alpha, nbest_size=-1)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.DecodeIds([i for i in ids if i > EOS_ID])

    @functools.cached_property
    def blank_ids(self) -> frozenset[int]:
        """Pieces that show no text on their own (the lone word start "▁", the special pieces but
        EOS): an output of only these decodes to an empty string."""
        return frozenset(i for i in range(self.vocab_size) if i != EOS_ID and not self.decode([i]).strip())

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """Each id's piece as the vocabulary spells it ("▁" starts a word)."""
        return [self.sp.IdToPiece(i) for i in ids]

    def fit(self, text: str) -> float:
        """How well this tokenizer's language model explains ``text``: the log-probability of its
        segmentation per character (the unigram pieces' own scores; an unknown piece costs
        :data:`UNKNOWN_PIECE_LOGPROB`). Tokenizers trained on a language score its text highest,
        which tells the language of a text offline, from the models' own files."""
        ids = self.encode(text)
        total = sum(UNKNOWN_PIECE_LOGPROB if i == UNK_ID else self.sp.GetScore(i) for i in ids)
        return total / max(1, len(text))


class IncrementalDetokenizer:
    """Turns a growing list of ids into text deltas that concatenate to ``decode(ids)``.

    Decoding piece by piece loses the spaces SentencePiece encodes as ``▁``; decoding the
    whole prefix and emitting only what is new keeps them.
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.text = ""

    def push(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if not text.startswith(self.text):
            # A piece changed how earlier ones render (rare, e.g. byte fallback): hold the
            # delta back until the text extends what was already emitted again.
            return ""
        delta = text[len(self.text) :]
        self.text = text
        return delta
