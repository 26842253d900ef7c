"""Decoder state: the per-row tensors that carry a batch from one decoder step to the next.

One row per hypothesis (a request, or one beam of a request). Continuous batching and
beam search only ever need these operations on it:

- ``select(index)``: keep / reorder / repeat rows (drop cancelled requests, reorder beams
  by back-pointer, tile a request into ``beam_size`` rows);
- ``move_rows(dst, src, rows)``: drop finished rows by moving the last rows into their places;
- ``append(other)``: merge freshly encoded requests into the running batch;
- ``len(state)``: the number of rows.

A state that a decoder step returned also holds that step's attention weights (attention
models): an output of the step, read by whoever asked for it. Nothing carries it on: every
row operation, and the next step, returns a state without it.

The per-source tensors (encoder memory, source mask, context) are the largest part of the
state, and in a busy engine requests join and leave at almost every step. ``move_rows``
and ``append`` therefore work in place on storage with spare rows and source positions,
like a preallocated KV cache, and copy only the rows that move or join; their receiver
must not be used afterwards (the engine replaces its state with the result).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class DecoderState:
    h: torch.Tensor  # (L, B, H) LSTM hidden state
    c: torch.Tensor  # (L, B, H) LSTM cell state
    memory: torch.Tensor | None = None  # (B, S, H) encoder outputs (attention only)
    src_mask: torch.Tensor | None = None  # (B, S) True on real source tokens (attention only)
    context: torch.Tensor | None = None  # (B, H) fixed context vector (context-every-step only)
    attention: torch.Tensor | None = None  # (B, S) the weights of the step that returned this state (attention only)

    def __len__(self) -> int:
        return self.h.size(1)

    @property
    def device(self) -> torch.device:
        return self.h.device

    def select(self, index: torch.Tensor) -> DecoderState:
        """Rows ``index`` (B',) of this state, with memory trimmed to their longest source."""
        index = index.to(self.h.device)
        memory = mask = None
        if self.memory is not None:
            assert self.src_mask is not None
            mask = self.src_mask.index_select(0, index)  # (B', S)
            width = int(mask.sum(1).max().item()) if len(index) else 0
            # Trim before gathering, so the results are contiguous and the copies no larger than needed.
            mask = mask[:, :width].contiguous()
            memory = self.memory[:, :width].index_select(0, index)
        return DecoderState(
            h=self.h.index_select(1, index),
            c=self.c.index_select(1, index),
            memory=memory,
            src_mask=mask,
            context=None if self.context is None else self.context.index_select(0, index),
        )

    def move_rows(self, dst: list[int], src: list[int], rows: int) -> DecoderState:
        """Rows ``src`` copied onto rows ``dst``, then the first ``rows`` rows kept.

        Unlike :meth:`select`, the per-source tensors are updated **in place** and the
        result views them: only the moved rows are copied.
        """
        index = torch.arange(rows)
        if dst:
            index[dst] = torch.tensor(src)
        index = index.to(self.h.device)
        moves = (torch.tensor(dst, device=self.h.device), torch.tensor(src, device=self.h.device)) if dst else None

        def moved(x: torch.Tensor | None) -> torch.Tensor | None:
            if x is None:
                return None
            if moves is not None:
                x.index_copy_(0, moves[0], x.index_select(0, moves[1]))
            return x[:rows]

        memory, mask = moved(self.memory), moved(self.src_mask)
        if memory is not None and mask is not None:
            width = int(mask.sum(1).max().item())
            memory, mask = memory[:, :width], mask[:, :width]
        return DecoderState(
            h=self.h.index_select(1, index),
            c=self.c.index_select(1, index),
            memory=memory,
            src_mask=mask,
            context=moved(self.context),
        )

    def append(self, other: DecoderState) -> DecoderState:
        """This state's rows, then ``other``'s; memory and mask are right-padded with zeros
        (False) to the wider source.

        ``other``'s rows are written into this state's spare storage when it has room, so
        the running rows are not copied; otherwise into new storage with room to grow.
        """
        return DecoderState(
            h=torch.cat([self.h, other.h], 1),
            c=torch.cat([self.c, other.c], 1),
            memory=_append_rows(self.memory, other.memory, padded=True),
            src_mask=_append_rows(self.src_mask, other.src_mask, padded=True),
            context=_append_rows(self.context, other.context, padded=False),
        )

    def with_lstm(self, h: torch.Tensor, c: torch.Tensor, attention: torch.Tensor | None = None) -> DecoderState:
        """The state after a step: its LSTM state and (attention models) its attention weights."""
        return replace(self, h=h, c=c, attention=attention)


def _append_rows(running: torch.Tensor | None, new: torch.Tensor | None, padded: bool) -> torch.Tensor | None:
    """``running`` (B, ...) then ``new`` (B', ...) along dim 0. With ``padded``, dim 1 is a
    source axis: both are zero-padded to the wider one.

    The result views storage with room to grow: ``running``'s own when the result fits
    into it, else new storage for twice the running rows (at least all of the result's) and
    1.5 times the width.
    """
    if running is None or new is None:
        return None
    rows, total = running.size(0), running.size(0) + new.size(0)
    width = max(running.size(1), new.size(1)) if padded else running.size(1)
    storage = _whole_storage(running, padded)
    if storage is None or storage.size(0) < total or storage.size(1) < width:
        spare_width = width + width // 2 if padded else width
        storage = running.new_zeros((max(total, 2 * rows), spare_width, *running.shape[2:]))
        storage[:rows, : running.size(1)].copy_(running)
    storage[:rows, running.size(1) : width].zero_()  # a wider source joined: clear what older rows left there
    storage[rows:total, : new.size(1)].copy_(new)
    storage[rows:total, new.size(1) : width].zero_()
    return storage[:total, :width]


def _whole_storage(x: torch.Tensor, padded: bool) -> torch.Tensor | None:
    """All of ``x``'s storage, as rows (and source positions) with ``x``'s strides, when ``x``
    is a leading block of it: the first rows (and positions) of a contiguous tensor."""
    if x.numel() == 0 or x.storage_offset() != 0 or x.stride(0) == 0:
        return None
    inner = x[0, 0] if padded else x[0]
    if not inner.is_contiguous():
        return None
    per_position = inner.numel() if padded else 1
    if padded and x.stride(1) != per_position:
        return None
    positions = x.stride(0) // per_position  # the storage's width (the row length, when not padded)
    rows = x.untyped_storage().nbytes() // (x.element_size() * x.stride(0))
    return x.as_strided((rows, positions, *x.shape[2:]), x.stride())
