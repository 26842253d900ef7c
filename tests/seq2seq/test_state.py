"""DecoderState.select / move_rows / append: reordering, padding and trimming of the source side, in place where promised."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from seq2seq.config import BOS_ID
from seq2seq.model import Seq2Seq
from seq2seq.state import DecoderState
from tests.seq2seq.conftest import CONFIGS, padded, random_ids, random_model

FIELDS = ("h", "c", "memory", "src_mask", "context")


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
    for name in ("memory", "src_mask", "context"):
        x = getattr(state, name)
        out[name] = None if x is None else x[i]
    return out


def test_select_all_is_the_identity(model: Seq2Seq) -> None:
    state = encode(model, [3, 6, 1, 4])
    assert_same(state.select(torch.arange(len(state))), state)


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
        elif name in ("memory", "src_mask"):
            assert torch.equal(y, x[:, :width]), name
        else:
            assert torch.equal(y, x), name


def test_select_nothing() -> None:
    state = encode(random_model(CONFIGS["attention"]), [2, 3])
    empty = state.select(torch.tensor([], dtype=torch.long))
    assert len(empty) == 0
    assert empty.memory is not None and empty.memory.shape[:2] == (0, 0)


def padded_cat(*states: DecoderState) -> dict[str, torch.Tensor | None]:
    """What appending ``states`` must give, built the obvious way: pad each part with zeros, concatenate."""
    out: dict[str, torch.Tensor | None] = {
        "h": torch.cat([st.h for st in states], 1),
        "c": torch.cat([st.c for st in states], 1),
        "context": None if states[0].context is None else torch.cat([st.context for st in states]),  # type: ignore[misc]
    }
    for name in ("memory", "src_mask"):
        parts = [getattr(st, name) for st in states]
        if parts[0] is None:
            out[name] = None
            continue
        width = max(p.size(1) for p in parts)
        out[name] = torch.cat([F.pad(p, [0, 0] * (p.dim() - 2) + [0, width - p.size(1)]) for p in parts])
    return out


def assert_equals(state: DecoderState, expected: dict[str, torch.Tensor | None]) -> None:
    for name in FIELDS:
        x, y = getattr(state, name), expected[name]
        assert (x is None) == (y is None), name
        if x is not None:
            assert x.shape == y.shape and torch.equal(x, y), name


def test_append_pads_and_select_trims_back() -> None:
    model = random_model(CONFIGS["attention"])
    short, long = encode(model, [2, 3], seed=0), encode(model, [6, 1, 5], seed=1)
    expected = padded_cat(short, long)
    merged = short.append(long)
    assert len(merged) == 5
    assert_equals(merged, expected)
    assert merged.src_mask is not None and torch.equal(merged.src_mask.sum(1), torch.tensor([2, 3, 6, 1, 5]))
    # Selecting only the short rows trims memory back to their longest source.
    assert_same(merged.select(torch.tensor([0, 1])), short)
    only_last = merged.select(torch.tensor([4]))
    assert only_last.memory is not None and only_last.memory.shape[1] == 5
    assert_same(only_last, long.select(torch.tensor([2])))


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_append_writes_into_spare_storage_and_clears_what_earlier_rows_left(arch: str) -> None:
    model = random_model(CONFIGS[arch])
    a, b, c, d = (encode(model, lengths, seed=i) for i, lengths in enumerate([[3, 2, 2], [4, 9], [2], [7]]))
    grown = a.append(b)  # a's storage is exactly its size: new storage for 6 rows of 13 positions
    assert_equals(grown, padded_cat(a, b))
    # The last row (9 long) finishes: the width shrinks to 4, but the storage keeps what that
    # source left beyond it, and the next row to join takes its place.
    moved = grown.move_rows([], [], 4)
    kept = [a, b.select(torch.tensor([0]))]
    expected = padded_cat(*kept, c)
    if grown.memory is not None:
        assert moved.memory is not None and moved.memory.shape[1] == 4
    storage = {
        name: getattr(moved, name).untyped_storage().data_ptr()
        for name in ("memory", "src_mask", "context")
        if getattr(moved, name) is not None
    }
    joined = moved.append(c)  # fits: written in place, nothing of the running rows copied
    assert_equals(joined, expected)
    for name, ptr in storage.items():
        assert getattr(joined, name).untyped_storage().data_ptr() == ptr, name
    # A wider source that still fits the storage's width: the older rows' stale positions are cleared.
    wider = joined.append(d)
    assert_equals(wider, padded_cat(*kept, c, d))
    if wider.memory is not None:
        assert wider.memory.untyped_storage().data_ptr() == storage["memory"]


def test_append_leaves_a_state_that_merely_views_other_tensors_alone(model: Seq2Seq) -> None:
    """States from the encoder own exactly their rows: appending to one never writes past them."""
    a, b = encode(model, [3, 2], seed=0), encode(model, [4], seed=1)
    before = {name: getattr(a, name).clone() for name in FIELDS if getattr(a, name) is not None}
    a.append(b)
    for name, x in before.items():
        assert torch.equal(getattr(a, name), x), name


def test_decoding_through_append_and_select_matches_separate_states(model: Seq2Seq) -> None:
    """The engine's path (append new requests, drop some rows) gives every row its own log-probs."""
    a, b = encode(model, [2, 5], seed=0), encode(model, [7, 1, 3], seed=1)
    bos2, bos3 = torch.full((2,), BOS_ID), torch.full((3,), BOS_ID)
    with torch.no_grad():
        lp_a, a1 = model.decode_step(bos2, a)
        lp_b, b1 = model.decode_step(bos3, b)
        lp_ab, ab1 = model.decode_step(torch.full((5,), BOS_ID), a.append(b))
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
