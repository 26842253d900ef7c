"""The analytic FLOPs agree with torch's FLOP counter and with the weight shapes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench import mfu
from seq2seq.config import ModelConfig
from seq2seq.model import Seq2Seq


def lstm_flops(lstm: torch.nn.LSTM) -> int:
    """2 FLOPs per weight of the input and recurrent matrices: every weight is one multiply-add per step."""
    return sum(2 * p.numel() for name, p in lstm.named_parameters() if name.startswith("weight_"))


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(src_vocab_size=50, tgt_vocab_size=60, emb_dim=8, hidden_dim=16, dec_layers=2, dropout=0.0),
        ModelConfig(
            architecture="context-every-step",
            src_vocab_size=50,
            tgt_vocab_size=60,
            emb_dim=8,
            hidden_dim=16,
            enc_layers=2,
            bidirectional=False,
            tie_embeddings=False,
            dropout=0.0,
        ),
    ],
)
def test_decoder_flops_match_the_model(cfg: ModelConfig) -> None:
    model = Seq2Seq(cfg).eval()
    src_len = 7
    src = torch.randint(4, cfg.src_vocab_size, (3, src_len))
    with torch.inference_mode():
        state = model.encode(src, torch.full((3,), src_len))
        counter = FlopCounterMode(display=False)
        with counter:  # the single decoder step runs lstm_cell, whose matmuls the counter sees too
            model.decode_step(torch.full((3,), 2), state)
    parts = mfu.decoder_flops(cfg, src_len)
    assert parts["lstm"] == lstm_flops(model.decoder.lstm)
    assert counter.get_total_flops() == 3 * sum(parts.values())
    # Only the attention's batched products grow with the source: at S = 0 the formula is the GEMMs alone.
    bmm = counter.get_flop_counts()["Global"].get(torch.ops.aten.bmm, 0)
    assert counter.get_total_flops() - bmm == 3 * sum(mfu.decoder_flops(cfg, 0).values())


def test_encoder_flops_match_the_weights() -> None:
    cfg = ModelConfig(src_vocab_size=50, tgt_vocab_size=60, emb_dim=8, hidden_dim=16, enc_layers=2, dropout=0.0)
    model = Seq2Seq(cfg)
    assert mfu.encoder_flops_per_source_token(cfg) == lstm_flops(model.encoder.lstm)
    bridge = 2 * (model.decoder.bridge_h.weight.numel() + model.decoder.bridge_c.weight.numel())
    assert mfu.bridge_flops_per_sentence(cfg) == bridge


@pytest.mark.parametrize("quantize", ["none", "int8"])
def test_matmul_peak_is_positive_and_restores_threads(quantize: str) -> None:
    threads = torch.get_num_threads()
    cpu = torch.device("cpu")
    assert mfu.matmul_peak_gflops(cpu, torch.float32, 1, n=64, rounds=2, min_round_s=0.01, quantize=quantize) > 0
    assert torch.get_num_threads() == threads
