"""DecoderState.select / concat: identities, reordering, padding and trimming of the source side."""

from __future__ import annotations

import pytest
import torch

from seq2seq.config import BOS_ID
from seq2seq.model import Seq2Seq
from seq2seq.state import DecoderState
from tests.seq2seq.conftest import CONFIGS, padded, random_ids, random_model

FIELDS = ("h", "c", "memory", "keys", "src_mask", "context")


def encode(model: Seq2Seq, lengths: list[int], seed: int = 0) -> DecoderState:
    g = torch.Generator().manual_seed(seed)
    src, lens = padded([random_ids(n, model.cfg.src_vocab_size, g) for n in lengths])
    with torch.no_grad():
        return model.encode(src, lens)


def assert_same(a: DecoderState, b: DecoderState) -> None:
    for name in FIELDS:
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.shape == y.shape and torch.equal(x, y), name


def rows(state: DecoderState, index: list[int]) -> dict[str, torch.Tensor | None]:
    """The expected per-row tensors of ``state.select(index)`` before trimming."""
    i = torch.tensor(index)
    out: dict[str, torch.Tensor | None] = {"h": state.h[:, i], "c": state.c[:, i]}
    for name in ("memory", "keys", "src_mask", "context"):
        x = getattr(state, name)
        out[name] = None if x is None else x[i]
    return out


def test_select_all_and_concat_one_are_identities(model: Seq2Seq) -> None:
    state = encode(model, [3, 6, 1, 4])
    assert_same(state.select(torch.arange(len(state))), state)
    assert_same(DecoderState.concat([state]), state)
    with pytest.raises(ValueError):
        DecoderState.concat([])


def test_select_reorders_and_repeats(model: Seq2Seq) -> None:
    state = encode(model, [3, 6, 1, 4])
    index = [3, 0, 0, 2]
    picked = state.select(torch.tensor(index))
    expected = rows(state, index)
    width = 4  # the longest selected source (rows 3, 0, 2 have lengths 4, 3, 1)
    assert len(picked) == 4
    for name, x in expected.items():
        y = getattr(picked, name)
        if x is None:
            assert y is None
        elif name in ("memory", "keys", "src_mask"):
            assert torch.equal(y, x[:, :width]), name
        else:
            assert torch.equal(y, x), name


def test_select_nothing() -> None:
    state = encode(random_model(CONFIGS["attention"]), [2, 3])
    empty = state.select(torch.tensor([], dtype=torch.long))
    assert len(empty) == 0
    assert empty.memory is not None and empty.memory.shape[:2] == (0, 0)


def test_concat_pads_and_select_trims_back() -> None:
    model = random_model(CONFIGS["attention"])
    short, long = encode(model, [2, 3], seed=0), encode(model, [6, 1, 5], seed=1)
    merged = DecoderState.concat([short, long])
    assert len(merged) == 5
    assert merged.memory is not None and merged.keys is not None and merged.src_mask is not None
    assert merged.memory.shape[1] == merged.keys.shape[1] == merged.src_mask.shape[1] == 6
    assert torch.equal(merged.h, torch.cat([short.h, long.h], 1))
    assert torch.equal(merged.src_mask.sum(1), torch.tensor([2, 3, 6, 1, 5]))
    # The short state's rows are padded with zeros / False beyond its own width.
    assert not merged.src_mask[:2, 3:].any()
    assert torch.equal(merged.memory[:2, 3:], torch.zeros(2, 3, merged.memory.size(2)))
    assert torch.equal(merged.memory[:2, :3], short.memory)
    # Selecting only the short rows trims memory back to their longest source.
    assert_same(merged.select(torch.tensor([0, 1])), short)
    only_last = merged.select(torch.tensor([4]))
    assert only_last.memory is not None and only_last.memory.shape[1] == 5
    assert_same(only_last, long.select(torch.tensor([2])))


def test_decoding_through_concat_and_select_matches_separate_states(model: Seq2Seq) -> None:
    """The engine's path (concat new requests, drop some rows) gives every row its own log-probs."""
    a, b = encode(model, [2, 5], seed=0), encode(model, [7, 1, 3], seed=1)
    bos2, bos3 = torch.full((2,), BOS_ID), torch.full((3,), BOS_ID)
    with torch.no_grad():
        lp_a, a1 = model.decode_step(bos2, a)
        lp_b, b1 = model.decode_step(bos3, b)
        lp_ab, ab1 = model.decode_step(torch.full((5,), BOS_ID), DecoderState.concat([a, b]))
        torch.testing.assert_close(lp_ab, torch.cat([lp_a, lp_b]), atol=1e-5, rtol=1e-5)
        keep = torch.tensor([4, 0, 3])  # drop a row of each, reorder the rest
        tokens = torch.tensor([5, 6, 7])
        lp_kept, _ = model.decode_step(tokens, ab1.select(keep))
        ref_b, _ = model.decode_step(tokens[[0, 2]], b1.select(torch.tensor([2, 1])))
        ref_a, _ = model.decode_step(tokens[1:2], a1.select(torch.tensor([0])))
    torch.testing.assert_close(lp_kept, torch.stack([ref_b[0], ref_a[0], ref_b[1]]), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_move_rows_equals_selecting_the_same_rows(arch: str) -> None:
    model = random_model(CONFIGS[arch])
    state = encode(model, [3, 9, 2, 5, 4, 6])
    # Rows 1 and 3 finished; rows 4 and 5 move into their places; row 9-long (1) leaves: width trims to 6.
    expected = state.select(torch.tensor([0, 4, 2, 5]))
    moved = state.move_rows([1, 3], [4, 5], 4)
    assert_same(moved, expected)
    # Only the last rows finished: nothing moves, the state is cut short.
    state = encode(model, [3, 9, 2])
    assert_same(state.move_rows([], [], 2), state.select(torch.tensor([0, 1])))
