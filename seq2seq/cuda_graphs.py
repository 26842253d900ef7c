"""The decoder step replayed from CUDA graphs: one launch instead of one per operation.

A decoder step of these models is ~60 small kernels (embedding, the LSTM cell's GEMM and
gates, attention, the output projection, log-softmax). On a GPU each costs a few
microseconds of launch and Python dispatch but far less arithmetic, so an eager step is
bound by the host. :class:`GraphedDecodeStep` captures ``model.decode_step`` once per batch
size bucket (1, 2, 4, 8, then every 8 rows, as vLLM does) on static input buffers and, at
each step, copies the batch into the smallest bucket that holds it and replays that graph.

The running batch keeps its own state (its rows join and leave at every step); only the
step's inputs are copied into the static buffers:

- rows beyond the batch are padding: they compute garbage that nobody reads (every row of
  the step is independent of the others);
- the encoder memory is copied into a buffer as wide as the longest source the server
  accepts, and source positions beyond the batch's width are masked out. The attention
  then spans ``max_width`` positions instead of the batch's width: a GPU does that extra
  arithmetic in the time it takes to launch one kernel.

Capture happens once, when the model is loaded, before its engine starts. Batches or
sources larger than the buffers fall back to the eager step.
"""

from __future__ import annotations

import torch

from seq2seq.model import Seq2Seq
from seq2seq.state import DecoderState

BUCKET_STEP = 8


def bucket_sizes(max_rows: int) -> list[int]:
    """Batch sizes to capture: 1, 2, 4, then multiples of 8, and ``max_rows`` itself."""
    sizes = {n for n in (1, 2, 4) if n < max_rows}
    sizes.update(range(BUCKET_STEP, max_rows, BUCKET_STEP))
    sizes.add(max_rows)
    return sorted(sizes)


class GraphedDecodeStep:
    """``model.decode_step`` with the same signature, replayed from CUDA graphs.

    The log-probs (and attention weights) it returns are views of static output buffers: valid
    until the next call (a decoder step consumes them before the next one). ``capture=False`` runs the
    same padded buffers eagerly, without graphs: what the step computes, on any device.
    """

    def __init__(self, model: Seq2Seq, max_rows: int, max_width: int, capture: bool = True) -> None:
        self.model = model
        self.max_rows = max_rows
        self.max_width = max_width
        self.sizes = bucket_sizes(max_rows)
        device = next(model.parameters()).device
        # The state layout (which tensors, their widths and dtype) comes from encoding a dummy source.
        with torch.inference_mode():
            probe = model.encode(torch.ones(1, max_width, dtype=torch.long, device=device), torch.tensor([max_width]))
        self.tokens = torch.ones(max_rows, dtype=torch.long, device=device)
        self.h = probe.h.new_zeros((probe.h.size(0), max_rows, *probe.h.shape[2:]))
        self.c = probe.c.new_zeros((probe.c.size(0), max_rows, *probe.c.shape[2:]))
        self.memory = self.src_mask = self.context = None
        if probe.memory is not None and probe.src_mask is not None:
            self.memory = probe.memory.new_zeros((max_rows, max_width, *probe.memory.shape[2:]))
            self.src_mask = torch.zeros(max_rows, max_width, dtype=torch.bool, device=device)
            self.src_mask[:, 0] = True  # padding rows attend somewhere: a row with no position is NaN
        if probe.context is not None:
            self.context = probe.context.new_zeros((max_rows, *probe.context.shape[1:]))
        self.graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, DecoderState]] = {}
        if capture:
            self._capture()

    def _inputs(self, rows: int) -> DecoderState:
        return DecoderState(
            h=self.h[:, :rows],
            c=self.c[:, :rows],
            memory=None if self.memory is None else self.memory[:rows],
            src_mask=None if self.src_mask is None else self.src_mask[:rows],
            context=None if self.context is None else self.context[:rows],
        )

    @torch.inference_mode()
    def _capture(self) -> None:
        # Warm up on the stream the captures will use (BLAS handles and workspaces are created
        # lazily per stream, and must not be created inside a capture), then capture the largest
        # graph first so the smaller ones reuse its memory pool.
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for rows in (self.sizes[0], self.sizes[-1]):
                self.model.decode_step(self.tokens[:rows], self._inputs(rows))
        torch.cuda.current_stream().wait_stream(side)
        pool = torch.cuda.graph_pool_handle()
        for rows in reversed(self.sizes):
            graph = torch.cuda.CUDAGraph()
            # thread_local: in a server of several models another thread may use the device meanwhile.
            with torch.cuda.graph(graph, pool=pool, stream=side, capture_error_mode="thread_local"):
                logprobs, state = self.model.decode_step(self.tokens[:rows], self._inputs(rows))
            self.graphs[rows] = (graph, logprobs, state)
        torch.cuda.synchronize()

    def fits(self, tokens: torch.Tensor, state: DecoderState) -> bool:
        return len(tokens) <= self.max_rows and (state.memory is None or state.memory.size(1) <= self.max_width)

    def __call__(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """tokens (B,), state of B rows -> log-probs (B, V) and the state after the step."""
        if not self.fits(tokens, state):
            return self.model.decode_step(tokens, state)
        n = len(tokens)
        rows = next(size for size in self.sizes if size >= n)
        self.tokens[:n].copy_(tokens)
        self.h[:, :n].copy_(state.h)
        self.c[:, :n].copy_(state.c)
        if self.memory is not None and self.src_mask is not None:
            assert state.memory is not None and state.src_mask is not None
            width = state.memory.size(1)
            self.memory[:n, :width].copy_(state.memory)
            self.src_mask[:n, :width].copy_(state.src_mask)
            self.src_mask[:n, width:] = False  # positions a wider source of an earlier step left
        if self.context is not None:
            assert state.context is not None
            self.context[:n].copy_(state.context)
        if rows in self.graphs:
            graph, logprobs, out = self.graphs[rows]
            graph.replay()
        else:
            logprobs, out = self.model.decode_step(self.tokens[:rows], self._inputs(rows))
        # The running batch keeps its own memory; h and c leave the static buffers, which the next step overwrites.
        # The attention weights, like the log-probs, are a view: read within the step, never kept.
        attention = None
        if out.attention is not None and state.memory is not None:
            attention = out.attention[:n, : state.memory.size(1)]
        return logprobs[:n], state.with_lstm(out.h[:, :n].clone(), out.c[:, :n].clone(), attention)
