"""The inference form: the fused step is exact, the int8 model tracks the float one."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.ao.nn.quantized import dynamic as nnqd

from seq2seq.decoding import DecodeParams
from seq2seq.generation import GenerationRequest, generate
from seq2seq.model import Seq2Seq, lstm_gates_to_state
from seq2seq.optimize import optimize_for_inference
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


def decode_steps(model: Seq2Seq, steps: int = 4) -> list[torch.Tensor]:
    """Log-probs of a few greedy steps over a fixed batch of three random sources."""
    g = torch.Generator().manual_seed(3)
    src, lengths = padded([random_ids(n, model.cfg.src_vocab_size, g) for n in (5, 2, 7)])
    out = []
    with torch.inference_mode():
        state = model.encode(src, lengths)
        tokens = torch.tensor([3, 5, 9])
        for _ in range(steps):
            logp, state = model.decode_step(tokens, state)
            out.append(logp)
            tokens = logp.argmax(-1)
    return out


def test_float_inference_form_computes_the_same_steps(model: Seq2Seq) -> None:
    fused = optimize_for_inference(model)
    assert not fused.training and fused.decoder.step_cells is not None
    assert fused.decoder.attn_query is None and fused.decoder.vocab is None  # only int8 needs them
    assert model.decoder.step_cells is None  # a copy: the original keeps the plain lstm_cell step
    for got, want in zip(decode_steps(fused), decode_steps(model.eval()), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_quantised_model_tracks_the_float_model(model: Seq2Seq) -> None:
    q = optimize_for_inference(model, "int8")
    # A quantised copy: the original keeps its float weights and the plain lstm_cell step.
    assert model.decoder.step_cells is None and model.decoder.vocab is None and model.decoder.attn_query is None
    if model.cfg.architecture == "attention":
        assert isinstance(q.decoder.attn_query, nnqd.Linear)
    assert all(isinstance(cell, nnqd.Linear) for cell in q.decoder.step_cells or [])
    assert isinstance(q.encoder.lstm, nnqd.LSTM)
    if model.cfg.tie_embeddings:
        assert isinstance(q.decoder.vocab, nnqd.Linear)
    else:
        assert isinstance(q.decoder.output, nnqd.Linear)

    # int8 weights on a 16-wide random model: close, not equal (a trained model's BLEU is in the README).
    # The relative error is ~2-4% here; a wrong gate order or weight layout gives 13-46%.
    for logp_q, logp_f in zip(decode_steps(q), decode_steps(model.eval()), strict=True):
        assert (logp_f - logp_q).norm() / logp_f.norm() < 0.06
        assert torch.equal(logp_f.argmax(-1), logp_q.argmax(-1))


def test_quantised_model_generates_greedy_and_beam(model: Seq2Seq) -> None:
    q = optimize_for_inference(model, "int8")
    g = torch.Generator().manual_seed(4)
    requests = [
        GenerationRequest(f"g{i}", random_ids(n, model.cfg.src_vocab_size, g), DecodeParams(max_length=8))
        for i, n in enumerate((3, 6))
    ] + [GenerationRequest("beam", random_ids(4, model.cfg.src_vocab_size, g), DecodeParams(max_length=8, beam_size=3))]
    results = generate(q, requests)
    assert set(results) == {"g0", "g1", "beam"}
    assert all(1 <= len(hyps) and len(hyps[0].tokens) <= 8 for hyps in results.values())
