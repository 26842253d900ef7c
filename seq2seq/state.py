"""Decoder state: the per-row tensors that carry a batch from one decoder step to the next.

One row per hypothesis (a request, or one beam of a request). Continuous batching and
beam search only ever need three operations on it, all of which return new objects:

- ``select(index)``: keep / reorder / repeat rows (drop finished requests, reorder beams
  by back-pointer, tile a request into ``beam_size`` rows);
- ``concat(states)``: merge freshly encoded requests into the running batch;
- ``len(state)``: the number of rows.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch


@dataclass(frozen=True)
class DecoderState:
    h: torch.Tensor  # (L, B, H) LSTM hidden state
    c: torch.Tensor  # (L, B, H) LSTM cell state
    memory: torch.Tensor | None = None  # (B, S, H) encoder outputs (attention only)
    keys: torch.Tensor | None = None  # (B, S, H) memory projected for scoring (attention only)
    src_mask: torch.Tensor | None = None  # (B, S) True on real source tokens (attention only)
    context: torch.Tensor | None = None  # (B, H) fixed context vector (context-every-step only)

    def __len__(self) -> int:
        return self.h.size(1)

    @property
    def device(self) -> torch.device:
        return self.h.device

    def select(self, index: torch.Tensor) -> DecoderState:
        """Rows ``index`` (B',) of this state, with memory trimmed to their longest source."""
        index = index.to(self.h.device)
        memory = keys = mask = None
        if self.memory is not None:
            assert self.keys is not None and self.src_mask is not None
            mask = self.src_mask.index_select(0, index)  # (B', S)
            width = int(mask.sum(1).max().item()) if len(index) else 0
            # Trim before gathering, so the results are contiguous and the copies no larger than needed.
            mask = mask[:, :width].contiguous()
            memory = self.memory[:, :width].index_select(0, index)
            keys = self.keys[:, :width].index_select(0, index)
        return DecoderState(
            h=self.h.index_select(1, index),
            c=self.c.index_select(1, index),
            memory=memory,
            keys=keys,
            src_mask=mask,
            context=None if self.context is None else self.context.index_select(0, index),
        )

    def move_rows(self, dst: list[int], src: list[int], rows: int) -> DecoderState:
        """Rows ``src`` copied onto rows ``dst``, then the first ``rows`` rows kept.

        Unlike :meth:`select`, the per-source tensors (memory, keys, mask, context) are
        updated **in place** and the result views them: only the moved rows are copied.
        The receiver must not be used afterwards (the engine replaces its state with the result).
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

        memory, keys, mask = moved(self.memory), moved(self.keys), moved(self.src_mask)
        if mask is not None:
            width = int(mask.sum(1).max().item())
            memory, keys, mask = memory[:, :width], keys[:, :width], mask[:, :width]  # type: ignore[index]
        return DecoderState(
            h=self.h.index_select(1, index),
            c=self.c.index_select(1, index),
            memory=memory,
            keys=keys,
            src_mask=mask,
            context=moved(self.context),
        )

    @staticmethod
    def concat(states: list[DecoderState]) -> DecoderState:
        """All rows of ``states`` in order; memory and masks are padded once to the widest source."""
        if not states:
            raise ValueError("concat needs at least one state")
        if len(states) == 1:
            return states[0]
        first = states[0]
        memory = keys = mask = None
        if first.memory is not None:
            memory = _stack_padded([s.memory for s in states])  # type: ignore[misc]
            keys = _stack_padded([s.keys for s in states])  # type: ignore[misc]
            mask = _stack_padded([s.src_mask for s in states])  # type: ignore[misc]
        context = None
        if first.context is not None:
            context = torch.cat([s.context for s in states], 0)  # type: ignore[misc]
        return DecoderState(
            h=torch.cat([s.h for s in states], 1),
            c=torch.cat([s.c for s in states], 1),
            memory=memory,
            keys=keys,
            src_mask=mask,
            context=context,
        )

    def with_lstm(self, h: torch.Tensor, c: torch.Tensor) -> DecoderState:
        return replace(self, h=h, c=c)


def _stack_padded(parts: list[torch.Tensor]) -> torch.Tensor:
    """Concatenate (B_i, S_i, ...) tensors along dim 0, right-padding dim 1 with zeros (False) to the widest.

    One allocation and one copy per part: padding each part first and then concatenating
    would copy the whole running batch twice whenever a wider source joins.
    """
    first = parts[0]
    out = first.new_zeros((sum(p.size(0) for p in parts), max(p.size(1) for p in parts), *first.shape[2:]))
    row = 0
    for p in parts:
        out[row : row + p.size(0), : p.size(1)].copy_(p)
        row += p.size(0)
    return out
