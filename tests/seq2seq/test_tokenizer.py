"""Tokenizer: training, round trips, the fixed special ids, incremental detokenization."""

from __future__ import annotations

import io
import random
from pathlib import Path

import pytest
import sentencepiece as spm

from seq2seq.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from seq2seq.tokenizer import (
    IncrementalDetokenizer,
    Tokenizer,
    TokenizerError,
    end_sentence,
    ends_sentence,
    seed_sampling,
)

WORDS = "the a cat dog sat on mat red blue house tree river quickly slowly jumped over under big small".split()


def word_sentences(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 10))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Tokenizer:
    prefix = tmp_path_factory.mktemp("tok") / "words"
    return Tokenizer.train(word_sentences(3000, seed=0), prefix, vocab_size=60)


def test_train_writes_model_file_and_fixes_special_ids(tokenizer: Tokenizer) -> None:
    assert tokenizer.path is not None and tokenizer.path.name == "words.model" and tokenizer.path.is_file()
    sp = tokenizer.sp
    assert (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (0, 1, 2, 3)
    assert 20 < tokenizer.vocab_size <= 60
    reloaded = Tokenizer.load(tokenizer.path)
    assert reloaded.vocab_size == tokenizer.vocab_size


def test_sample_encode_draws_other_segmentations_of_the_same_text_and_repeats_with_the_seed(
    tokenizer: Tokenizer,
) -> None:
    texts = word_sentences(50, seed=2)

    def draw() -> list[list[int]]:
        seed_sampling(7)
        return [tokenizer.sample_encode(t, alpha=0.2) for t in texts]

    drawn = draw()
    assert [tokenizer.decode(ids) for ids in drawn] == texts  # the same text, in other pieces
    assert sum(ids != tokenizer.encode(t) for ids, t in zip(drawn, texts, strict=True)) >= 10
    assert draw() == drawn
    seed_sampling(8)
    assert [tokenizer.sample_encode(t, alpha=0.2) for t in texts] != drawn


def test_round_trip(tokenizer: Tokenizer) -> None:
    for text in word_sentences(50, seed=1):
        ids = tokenizer.encode(text)
        assert ids and all(i > EOS_ID for i in ids)  # no BOS/EOS added, no unknown pieces
        assert tokenizer.decode(ids) == text


def test_decode_skips_special_ids(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("the red cat")
    assert tokenizer.decode([BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == "the red cat"


def test_blank_ids_are_the_pieces_that_show_no_text(tokenizer: Tokenizer) -> None:
    blank = tokenizer.blank_ids
    assert EOS_ID not in blank and {PAD_ID, UNK_ID, BOS_ID} <= blank
    assert tokenizer.pieces([i for i in blank if i > EOS_ID]) == ["▁"]  # the lone word start
    assert all(tokenizer.decode([i]) == "" for i in blank)
    shown = [i for i in range(tokenizer.vocab_size) if i not in blank and i != EOS_ID]
    assert all(tokenizer.decode([i]).strip() for i in shown)


def test_load_rejects_other_special_ids(tmp_path: Path) -> None:
    # SentencePiece's defaults are unk=0, bos=1, eos=2, no pad: a model trained elsewhere.
    model = io.BytesIO()
    spm.SentencePieceTrainer.Train(
        sentence_iterator=iter(word_sentences(500, seed=2)),
        model_writer=model,
        vocab_size=40,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    path = tmp_path / "foreign.model"
    path.write_bytes(model.getvalue())
    with pytest.raises(TokenizerError, match="special ids"):
        Tokenizer.load(path)


def test_load_missing_or_corrupt_file(tmp_path: Path) -> None:
    with pytest.raises(TokenizerError, match="cannot load"):
        Tokenizer.load(tmp_path / "nope.model")
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a sentencepiece model")
    with pytest.raises(TokenizerError, match="cannot load"):
        Tokenizer.load(bad)


def test_incremental_detokenizer_deltas_concatenate_to_decode(tokenizer: Tokenizer) -> None:
    for text in word_sentences(20, seed=3):
        ids = tokenizer.encode(text)
        detok = IncrementalDetokenizer(tokenizer)
        deltas = [detok.push(i) for i in ids]
        assert "".join(deltas) == tokenizer.decode(ids) == text
        assert detok.text == text
        # Spaces survive: the words after the first arrive with their leading space.
        assert sum(d.startswith(" ") for d in deltas) == text.count(" ")


def test_incremental_detokenizer_ignores_special_ids(tokenizer: Tokenizer) -> None:
    ids = tokenizer.encode("big dog")
    detok = IncrementalDetokenizer(tokenizer)
    deltas = [detok.push(i) for i in [BOS_ID, *ids, EOS_ID]]
    assert deltas[0] == "" and deltas[-1] == ""
    assert "".join(deltas) == "big dog"


def test_end_sentence_adds_the_mark_only_to_a_text_that_ends_no_sentence() -> None:
    assert end_sentence("Ein Hund läuft", ".") == "Ein Hund läuft."
    assert end_sentence("Ein Hund läuft  ", ".") == "Ein Hund läuft."
    for done in ("Ein Hund läuft.", "Läuft er?", "Lauf!", 'Er sagt „ja"', "(so)"):
        assert end_sentence(done, ".") == done
    assert end_sentence("   ", ".") == "   "  # nothing to end
    assert end_sentence("Ein Hund läuft", None) == "Ein Hund läuft"  # the model declares no mark
    assert ends_sentence("Ja.") and not ends_sentence("Ja") and not ends_sentence("")
