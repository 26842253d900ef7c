"""Corpus readers and length-bucketed batching."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest
import torch

from seq2seq.config import BOS_ID, EOS_ID, PAD_ID
from training.data import (
    batches,
    encode_pairs,
    load_corpus,
    load_file_corpus,
    make_batch,
    read_parallel,
    read_tsv,
)


def examples(n: int, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        src_len, tgt_len = torch.randint(1, 15, (2,), generator=g).tolist()
        out.append(([4 + i % 7] * src_len, [1000 + i] * tgt_len))  # the target's ids identify the example
    return out


def example_ids(batch_tgt_out: torch.Tensor) -> list[int]:
    return [int(row[0]) - 1000 for row in batch_tgt_out]


# -- readers ----------------------------------------------------------------------------------


def test_read_parallel_plain_and_gzip(tmp_path: Path) -> None:
    (tmp_path / "a.de").write_text("Hallo Welt\n  \nguten Morgen \n", encoding="utf-8")
    with gzip.open(tmp_path / "a.en.gz", "wt", encoding="utf-8") as f:
        f.write("hello world\nblank source\n good morning\n")
    # The blank source line drops its pair; whitespace is stripped.
    assert read_parallel(tmp_path / "a.de", tmp_path / "a.en.gz") == [
        ("Hallo Welt", "hello world"),
        ("guten Morgen", "good morning"),
    ]


def test_read_parallel_length_mismatch(tmp_path: Path) -> None:
    (tmp_path / "src.txt").write_text("a\nb\nc\n")
    (tmp_path / "tgt.txt").write_text("x\ny\n")
    with pytest.raises(ValueError, match=r"src.txt has 3 lines but .*tgt.txt has 2"):
        read_parallel(tmp_path / "src.txt", tmp_path / "tgt.txt")


def test_read_tsv(tmp_path: Path) -> None:
    path = tmp_path / "pairs.tsv"
    path.write_text("how are you?\tfine, thanks\n\n  hi \t hello \textra column\n", encoding="utf-8")
    assert read_tsv(path) == [("how are you?", "fine, thanks"), ("hi", "hello")]
    path.write_text("ok\tfine\nno tab here\n")
    with pytest.raises(ValueError, match=r"pairs.tsv:2: expected 'source<TAB>target'"):
        read_tsv(path)


def test_file_corpus(tmp_path: Path) -> None:
    (tmp_path / "train.tsv").write_text("a\tb\nc\td\n")
    (tmp_path / "val.src").write_text("e\n")
    (tmp_path / "val.tgt").write_text("f\n")
    corpus = load_corpus(
        "files",
        files={"train": tmp_path / "train.tsv", "val_src": tmp_path / "val.src", "val_tgt": tmp_path / "val.tgt"},
    )
    assert corpus.train == [("a", "b"), ("c", "d")]
    assert corpus.val == [("e", "f")] and corpus.test == corpus.val  # no test split: validation stands in
    assert corpus.provenance["dataset"] == "user files"
    with pytest.raises(ValueError, match="needs train and val"):
        load_file_corpus({"train": tmp_path / "train.tsv"})
    with pytest.raises(ValueError, match="needs --train"):
        load_corpus("files")
    with pytest.raises(ValueError, match="unknown corpus"):
        load_corpus("wikipedia")


# -- encoding and batches ---------------------------------------------------------------------


class CharTokenizer:
    """Stands in for a Tokenizer: one id per character."""

    def encode(self, text: str) -> list[int]:
        return [4 + ord(ch) % 50 for ch in text]


def test_encode_pairs_drops_empty_and_too_long() -> None:
    tok = CharTokenizer()
    pairs = [("abc", "de"), ("", "x"), ("abcdef", "x"), ("a", "abcdef"), ("abcde", "abcde")]
    encoded = encode_pairs(pairs, tok, tok, max_len=5)  # type: ignore[arg-type]
    assert encoded == [(tok.encode("abc"), tok.encode("de")), (tok.encode("abcde"), tok.encode("abcde"))]


def test_make_batch_layout() -> None:
    batch = make_batch([([5, 6, 7], [8, 9]), ([10], [11, 12, 13])])
    assert batch.src.tolist() == [[5, 6, 7], [10, PAD_ID, PAD_ID]]
    assert batch.src_lengths.tolist() == [3, 1]
    assert batch.tgt_in.tolist() == [[BOS_ID, 8, 9, PAD_ID], [BOS_ID, 11, 12, 13]]
    assert batch.tgt_out.tolist() == [[8, 9, EOS_ID, PAD_ID], [11, 12, 13, EOS_ID]]
    assert batch.n_tokens == 3 + 4


@pytest.mark.parametrize("shuffle_seed", [None, 7])
@pytest.mark.parametrize("max_tokens", [1, 40, 200])
def test_batches_cover_every_example_once_within_max_tokens(shuffle_seed: int | None, max_tokens: int) -> None:
    data = examples(300)
    seen: list[int] = []
    for batch in batches(data, max_tokens, shuffle_seed):
        ids = example_ids(batch.tgt_out)
        seen.extend(ids)
        assert batch.src.size(0) == batch.tgt_in.size(0) == len(ids)
        assert batch.tgt_out.numel() <= max_tokens or len(ids) == 1  # padded target tokens
        assert batch.n_tokens == sum(len(data[i][1]) + 1 for i in ids)
        for row, i in enumerate(ids):  # each row holds its own example
            assert batch.src[row, : batch.src_lengths[row]].tolist() == data[i][0]
    assert sorted(seen) == list(range(len(data)))


def test_batches_group_similar_lengths() -> None:
    data = examples(300)
    widths = [b.tgt_out.size(1) for b in batches(data, 100)]
    assert widths == sorted(widths)  # without shuffling: shortest first
    for batch in batches(data, 100, shuffle_seed=3):
        lengths = [len(data[i][1]) for i in example_ids(batch.tgt_out)]
        assert max(lengths) - min(lengths) <= 1


def test_batches_shuffle_is_deterministic() -> None:
    data = examples(300)

    def order(seed: int | None) -> list[list[int]]:
        return [example_ids(b.tgt_out) for b in batches(data, 100, shuffle_seed=seed)]

    assert order(5) == order(5)
    assert order(5) != order(6)
    assert order(5) != order(None)
    widths = [b.tgt_out.size(1) for b in batches(data, 100, shuffle_seed=5)]
    assert widths != sorted(widths)  # the batch order itself is shuffled, not only the rows inside
