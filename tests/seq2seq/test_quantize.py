"""int8 dynamic quantisation: the fused step cell is exact, the quantised model tracks the float one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.ao.nn.quantized import dynamic as nnqd

from seq2seq.decoding import DecodeParams
from seq2seq.generation import GenerationRequest, generate
from seq2seq.model import Seq2Seq, lstm_gates_to_state
from seq2seq.quantize import quantize_int8
from tests.seq2seq.conftest import padded, random_ids


def test_fused_gates_match_lstm_cell() -> None:
    g = torch.Generator().manual_seed(0)
    x, h, c = (torch.randn(5, n, generator=g) for n in (6, 8, 8))
    w_ih, w_hh = torch.randn(32, 6, generator=g), torch.randn(32, 8, generator=g)
    b_ih, b_hh = torch.randn(32, generator=g), torch.randn(32, generator=g)
    expected = torch.lstm_cell(x, (h, c), w_ih, w_hh, b_ih, b_hh)
    gates = F.linear(torch.cat([x, h], 1), torch.cat([w_ih, w_hh], 1), b_ih + b_hh)
    for got, want in zip(lstm_gates_to_state(gates, c), expected, strict=True):
        torch.testing.assert_close(got, want)


def test_quantised_model_tracks_the_float_model(model: Seq2Seq) -> None:
    q = quantize_int8(model)
    # A quantised copy: the original keeps its float weights and the plain lstm_cell step.
    assert model.decoder.step_cells is None and model.decoder.vocab is None
    assert all(isinstance(cell, nnqd.Linear) for cell in q.decoder.step_cells or [])
    assert isinstance(q.encoder.lstm, nnqd.LSTM)
    if model.cfg.tie_embeddings:
        assert isinstance(q.decoder.vocab, nnqd.Linear)
    else:
        assert isinstance(q.decoder.output, nnqd.Linear)

    g = torch.Generator().manual_seed(3)
    src, lengths = padded([random_ids(n, model.cfg.src_vocab_size, g) for n in (5, 2, 7)])
    with torch.inference_mode():
        state_f, state_q = model.encode(src, lengths), q.encode(src, lengths)
        tokens = torch.tensor([3, 5, 9])
        for _ in range(4):
            logp_f, state_f = model.decode_step(tokens, state_f)
            logp_q, state_q = q.decode_step(tokens, state_q)
            # int8 weights on a 16-wide random model: close, not equal (a trained model's BLEU is in the README).
            # The relative error is ~2-4% here; a wrong gate order or weight layout gives 13-46%.
            assert (logp_f - logp_q).norm() / logp_f.norm() < 0.06
            assert torch.equal(logp_f.argmax(-1), logp_q.argmax(-1))
            tokens = logp_f.argmax(-1)


def test_quantised_model_generates_greedy_and_beam(model: Seq2Seq) -> None:
    q = quantize_int8(model)
    g = torch.Generator().manual_seed(4)
    requests = [
        GenerationRequest(f"g{i}", random_ids(n, model.cfg.src_vocab_size, g), DecodeParams(max_length=8))
        for i, n in enumerate((3, 6))
    ] + [GenerationRequest("beam", random_ids(4, model.cfg.src_vocab_size, g), DecodeParams(max_length=8, beam_size=3))]
    results = generate(q, requests)
    assert set(results) == {"g0", "g1", "beam"}
    assert all(1 <= len(hyps) and len(hyps[0].tokens) <= 8 for hyps in results.values())
