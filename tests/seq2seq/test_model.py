"""Seq2Seq for every architecture: shapes, padding invariance, incremental == teacher-forced decoding."""

from __future__ import annotations

import pytest
import torch

from seq2seq.config import BOS_ID, ModelConfig
from seq2seq.model import Seq2Seq
from tests.seq2seq.conftest import CONFIGS, TGT_VOCAB, padded, random_ids, random_model

LENGTHS = [5, 1, 3, 7]


def batch(cfg: ModelConfig, lengths: list[int], seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    g = torch.Generator().manual_seed(seed)
    sources = [random_ids(n, cfg.src_vocab_size, g) for n in lengths]
    src, lens = padded(sources)
    return src, lens, sources


def teacher_inputs(batch_size: int, steps: int, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tgt = torch.randint(4, TGT_VOCAB, (batch_size, steps), generator=g)
    tgt[:, 0] = BOS_ID
    return tgt


def test_config_validation() -> None:
    with pytest.raises(ValueError, match="architecture"):
        ModelConfig(architecture="transformer")
    with pytest.raises(ValueError, match="even"):
        ModelConfig(hidden_dim=15)
    with pytest.raises(ValueError, match="share_vocab"):
        ModelConfig(share_vocab=True, src_vocab_size=10, tgt_vocab_size=11)
    with pytest.raises(ValueError, match="unknown model config keys: colour"):
        ModelConfig.from_dict({**ModelConfig().to_dict(), "colour": "red"})
    cfg = CONFIGS["attention"]
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg


def test_shapes(model: Seq2Seq) -> None:
    cfg = model.cfg
    src, lens, _ = batch(cfg, LENGTHS)
    b, s, h, layers = len(LENGTHS), max(LENGTHS), cfg.hidden_dim, cfg.dec_layers
    with torch.no_grad():
        state = model.encode(src, lens)
        assert state.h.shape == state.c.shape == (layers, b, h)
        assert len(state) == b
        if cfg.architecture == "attention":
            assert state.memory is not None and state.src_mask is not None
            assert state.memory.shape == (b, s, h)
            assert state.src_mask.dtype == torch.bool
            expected = torch.tensor([[t < n for t in range(s)] for n in LENGTHS])
            assert torch.equal(state.src_mask, expected)
            assert state.context is None
        else:
            assert state.memory is None and state.src_mask is None
            if cfg.architecture == "context-every-step":
                assert state.context is not None and state.context.shape == (b, h)
            else:
                assert state.context is None
        logprobs, new_state = model.decode_step(torch.full((b,), BOS_ID), state)
        assert logprobs.shape == (b, cfg.tgt_vocab_size)
        assert torch.allclose(logprobs.exp().sum(-1), torch.ones(b), atol=1e-5)
        assert new_state.h.shape == (layers, b, h)
        assert not torch.equal(new_state.h, state.h)
        assert new_state.memory is state.memory  # the source side is carried, not recomputed
        logits = model(src, lens, teacher_inputs(b, 6))
        assert logits.shape == (b, 6, cfg.tgt_vocab_size)


def test_padding_invariance(model: Seq2Seq) -> None:
    """A sentence gets the same log-probs alone as inside a padded batch (with extra padding columns too)."""
    cfg = model.cfg
    src, lens, sources = batch(cfg, LENGTHS)
    src = torch.cat([src, torch.zeros(len(LENGTHS), 2, dtype=torch.long)], dim=1)  # wider than any source
    tgt = teacher_inputs(len(LENGTHS), 5)
    with torch.no_grad():
        batched = torch.log_softmax(model(src, lens, tgt), -1)
        for i, s in enumerate(sources):
            alone = torch.log_softmax(model(torch.tensor([s]), torch.tensor([len(s)]), tgt[i : i + 1]), -1)
            torch.testing.assert_close(batched[i : i + 1], alone, atol=1e-5, rtol=1e-5)


def test_sources_matter(model: Seq2Seq) -> None:
    """Guard for the test above: different sources give different outputs, so equality means something."""
    src, lens, _ = batch(model.cfg, [4, 4])
    with torch.no_grad():
        out = model(src, lens, teacher_inputs(2, 3)[:1].expand(2, -1))
    assert (out[0] - out[1]).abs().max() > 1e-3


def test_incremental_decoding_matches_teacher_forcing(model: Seq2Seq) -> None:
    cfg = model.cfg
    src, lens, _ = batch(cfg, LENGTHS)
    tgt = teacher_inputs(len(LENGTHS), 8)
    with torch.no_grad():
        forced = torch.log_softmax(model(src, lens, tgt).float(), -1)  # (B, T, V)
        state = model.encode(src, lens)
        steps = []
        for t in range(tgt.size(1)):
            logprobs, state = model.decode_step(tgt[:, t], state)
            steps.append(logprobs)
    torch.testing.assert_close(torch.stack(steps, 1), forced, atol=1e-5, rtol=1e-5)


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout(model: Seq2Seq) -> None:
    src, lens, _ = batch(model.cfg, LENGTHS)
    tgt = teacher_inputs(len(LENGTHS), 4)
    with torch.no_grad():
        assert torch.equal(model(src, lens, tgt), model(src, lens, tgt))
        model.train()
        torch.manual_seed(0)
        noisy = model(src, lens, tgt)
        model.eval()
        assert not torch.allclose(noisy, model(src, lens, tgt))


def test_shared_vocab_ties_source_and_target_embeddings() -> None:
    cfg = ModelConfig(
        architecture="attention", src_vocab_size=11, tgt_vocab_size=11, emb_dim=8, hidden_dim=8, share_vocab=True
    )
    model = random_model(cfg)
    assert model.encoder.embedding is model.decoder.embedding
    separate = Seq2Seq(ModelConfig(**{**cfg.to_dict(), "share_vocab": False}))
    assert model.num_parameters() == separate.num_parameters() - 11 * 8
