"""LSTM encoder-decoder models, in one file.

Three architectures share the same encoder and decoder and differ only in how the
decoder sees the source (``ModelConfig.architecture``):

1. ``context-init`` (Sutskever et al., 2014): the encoder's final state is the decoder's
   initial state and nothing else; the whole source must fit in that fixed-size vector.
2. ``context-every-step`` (Cho et al., 2014): the same initial state, and the context
   vector (the encoder's final top-layer hidden state) is also an input at every decoder
   step and to the output layer.
3. ``attention`` (Luong et al., 2015, "general" score): a bidirectional encoder keeps all
   its outputs; at every step the decoder scores them against its hidden state and mixes
   the attended context into its output, which removes the fixed-size bottleneck.

None of them feed the previous output back into the LSTM beyond the token itself, so
teacher-forced training runs the decoder LSTM over the whole target sequence in one call,
and ``decode_step`` is exactly that computation with one time step. The inference engine
uses ``encode`` once per request and ``decode_step`` over any set of rows; the state is a
:class:`~seq2seq.state.DecoderState` that can be indexed and concatenated row by row.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from seq2seq.config import BOS_ID, EOS_ID, PAD_ID, ModelConfig
from seq2seq.state import DecoderState


def pad(rows: Sequence[Sequence[int]]) -> torch.Tensor:
    """Rows of piece ids as one ``(B, T)`` tensor, right-padded with ``PAD_ID``: the layout of
    ``src`` and of the targets. One nested list becomes one tensor, with no per-row copies."""
    width = max(len(r) for r in rows)
    return torch.tensor([[*r, *[PAD_ID] * (width - len(r))] for r in rows], dtype=torch.long)


def teacher_forcing(targets: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The decoder's inputs and expected outputs for ``targets``: ``SOS y`` and ``y EOS``."""
    return pad([[BOS_ID, *t] for t in targets]), pad([[*t, EOS_ID] for t in targets])


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = embedding
        self.dropout = nn.Dropout(cfg.dropout)
        self.lstm = nn.LSTM(
            cfg.emb_dim,
            cfg.enc_hidden_per_direction,
            num_layers=cfg.enc_layers,
            bidirectional=cfg.bidirectional,
            dropout=cfg.dropout if cfg.enc_layers > 1 else 0.0,
            batch_first=True,
        )

    def forward(self, src: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """src: (B, S) padded ids, lengths: (B,) -> memory (B, S', H), h and c (L_enc, B, H).

        Packing makes every row's result independent of the padding around it, so a
        sentence encodes to the same vectors alone or in any batch.
        """
        x = self.dropout(self.embedding(src))  # (B, S, E)
        packed = pack_padded_sequence(x, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, (h, c) = self.lstm(packed)
        memory, _ = pad_packed_sequence(out, batch_first=True)  # (B, S', H), S' = max(lengths)
        if self.cfg.bidirectional:
            h, c = _merge_directions(h), _merge_directions(c)  # (L_enc, B, H)
        return memory, h, c


def _merge_directions(x: torch.Tensor) -> torch.Tensor:
    """(L * 2, B, H/2) forward/backward final states -> (L, B, H)."""
    layers2, batch, half = x.shape
    x = x.view(layers2 // 2, 2, batch, half)
    return torch.cat([x[:, 0], x[:, 1]], dim=-1)


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig, embedding: nn.Embedding) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = embedding
        self.dropout = nn.Dropout(cfg.dropout)
        arch = cfg.architecture
        h = cfg.hidden_dim
        lstm_in = cfg.emb_dim + (h if arch == "context-every-step" else 0)
        self.lstm = nn.LSTM(
            lstm_in,
            h,
            num_layers=cfg.dec_layers,
            dropout=cfg.dropout if cfg.dec_layers > 1 else 0.0,
            batch_first=True,
        )
        # Encoder final state -> decoder initial state (the "context vector").
        self.bridge_h = nn.Linear(h, h)
        self.bridge_c = nn.Linear(h, h)
        if arch == "attention":
            self.attn_proj = nn.Linear(h, h, bias=False)  # W_a in score(h_t, m_s) = h_t W_a m_s (see _attention_query)
        if arch != "context-init":
            self.combine = nn.Linear(2 * h, h)  # tanh(W_c [h_t; context_t])
        if cfg.tie_embeddings:
            self.pre_output = nn.Linear(h, cfg.emb_dim)
            self.out_bias = nn.Parameter(torch.zeros(cfg.tgt_vocab_size))
        else:
            self.output = nn.Linear(h, cfg.tgt_vocab_size)
        # Inference-only modules, set by :func:`seq2seq.optimize.optimize_for_inference`: each
        # layer's single-step LSTM as one GEMM over [x; h] (always), and the attention query
        # and tied output projections as Linear layers (for int8 weights). Training never uses them.
        self.step_cells: nn.ModuleList | None = None
        self.attn_query: nn.Module | None = None
        self.vocab: nn.Module | None = None

    def init_state(self, memory: torch.Tensor, h: torch.Tensor, c: torch.Tensor, lengths: torch.Tensor) -> DecoderState:
        """Build the step-0 state from the encoder's outputs (memory (B, S, H), h, c (L_enc, B, H))."""
        layers = self.cfg.dec_layers
        h, c = _fit_layers(h, layers), _fit_layers(c, layers)  # (L_dec, B, H)
        h0 = torch.tanh(self.bridge_h(h))
        c0 = self.bridge_c(c)
        arch = self.cfg.architecture
        if arch == "attention":
            mask = torch.arange(memory.size(1), device=memory.device)[None, :] < lengths.to(memory.device)[:, None]
            return DecoderState(h0, c0, memory=memory, src_mask=mask)
        if arch == "context-every-step":
            return DecoderState(h0, c0, context=h[-1])  # (B, H): the top layer's final state
        return DecoderState(h0, c0)

    def forward(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """tokens: (B, T) decoder inputs -> logits (B, T, V) and the state after step T."""
        x = self.dropout(self.embedding(tokens))  # (B, T, E)
        if state.context is not None:
            ctx = state.context[:, None, :].expand(-1, x.size(1), -1)  # (B, T, H)
            x = torch.cat([x, ctx], dim=-1)
        if x.size(1) == 1 and not self.training:
            out, h, c = self._lstm_step(x[:, 0], state.h, state.c)
        else:
            out, (h, c) = self.lstm(x, (state.h, state.c))  # out: (B, T, H)
        attention = None
        if state.memory is not None:
            assert state.src_mask is not None
            scores = torch.bmm(self._attention_query(out), state.memory.transpose(1, 2))  # (B, T, S)
            scores = scores.masked_fill(~state.src_mask[:, None, :], float("-inf"))
            weights = torch.softmax(scores, dim=-1)  # (B, T, S): each row sums to 1 over the real source
            context = torch.bmm(weights, state.memory)  # (B, T, H)
            out = torch.tanh(self.combine(torch.cat([out, context], dim=-1)))
            attention = weights[:, -1]  # (B, S) the last step's, a view: nothing is copied
        elif state.context is not None:
            out = torch.tanh(self.combine(torch.cat([out, ctx], dim=-1)))
        out = self.dropout(out)
        if self.vocab is not None:
            logits = self.vocab(self.pre_output(out))
        elif self.cfg.tie_embeddings:
            logits = F.linear(self.pre_output(out), self.embedding.weight, self.out_bias)
        else:
            logits = self.output(out)
        return logits, state.with_lstm(h, c, attention)  # logits: (B, T, V)

    def _attention_query(self, out: torch.Tensor) -> torch.Tensor:
        """h_t W_a, so that score(h_t, m_s) = (h_t W_a) . m_s.

        Projecting the query once per step instead of every memory row once per request
        (the keys W_a m_s) costs the same arithmetic, and leaves the encoder memory the only
        per-source tensor a running batch holds, reads and copies.
        """
        if self.attn_query is not None:
            return self.attn_query(out)
        return out @ self.attn_proj.weight

    def _lstm_step(
        self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One time step with ``torch.lstm_cell`` on the same weights: x (B, E'), h, c (L, B, H).

        ``nn.LSTM`` called for a single step goes through the fused sequence kernel, whose
        fixed cost is several times the arithmetic at small batch; the cell is two GEMMs.
        """
        hs, cs = [], []
        for layer in range(self.cfg.dec_layers):
            if self.step_cells is not None:
                h_l, c_l = lstm_gates_to_state(self.step_cells[layer](torch.cat([x, h[layer]], 1)), c[layer])
            else:
                h_l, c_l = torch.lstm_cell(
                    x,
                    (h[layer], c[layer]),
                    getattr(self.lstm, f"weight_ih_l{layer}"),
                    getattr(self.lstm, f"weight_hh_l{layer}"),
                    getattr(self.lstm, f"bias_ih_l{layer}"),
                    getattr(self.lstm, f"bias_hh_l{layer}"),
                )
            hs.append(h_l)
            cs.append(c_l)
            x = h_l  # inter-layer dropout is a training-time op only
        return x[:, None, :], torch.stack(hs), torch.stack(cs)  # (B, 1, H), (L, B, H), (L, B, H)


def lstm_gates_to_state(gates: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """gates (B, 4H) = W_ih x + b_ih + W_hh h + b_hh in PyTorch's (input, forget, cell, output) order -> h', c'."""
    i, f, g, o = gates.chunk(4, 1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _fit_layers(x: torch.Tensor, layers: int) -> torch.Tensor:
    """Use the top ``layers`` encoder layers' states; repeat the top one if the encoder has fewer."""
    if x.size(0) >= layers:
        return x[x.size(0) - layers :]
    return torch.cat([x, x[-1:].expand(layers - x.size(0), -1, -1)], dim=0)


class Seq2Seq(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        src_emb = nn.Embedding(cfg.src_vocab_size, cfg.emb_dim, padding_idx=PAD_ID)
        tgt_emb = src_emb if cfg.share_vocab else nn.Embedding(cfg.tgt_vocab_size, cfg.emb_dim, padding_idx=PAD_ID)
        self.encoder = Encoder(cfg, src_emb)
        self.decoder = Decoder(cfg, tgt_emb)

    def encode(self, src: torch.Tensor, lengths: torch.Tensor) -> DecoderState:
        """src: (B, S) padded source ids, lengths: (B,) -> the decoder's initial state."""
        memory, h, c = self.encoder(src, lengths)
        return self.decoder.init_state(memory, h, c, lengths)

    def decode_step(self, tokens: torch.Tensor, state: DecoderState) -> tuple[torch.Tensor, DecoderState]:
        """tokens: (B,) previous tokens -> log-probs (B, V) of the next token, and the new state
        (with the step's attention weights over the source, ``state.attention`` (B, S), in
        attention models)."""
        logits, state = self.decoder(tokens[:, None], state)
        return torch.log_softmax(logits[:, 0].float(), dim=-1), state

    def forward(self, src: torch.Tensor, lengths: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Teacher forcing: tgt_in (B, T) = BOS y_1 .. y_{T-1} -> logits (B, T, V) for y_1 .. EOS."""
        logits, _ = self.decoder(tgt_in, self.encode(src, lengths))
        return logits

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
