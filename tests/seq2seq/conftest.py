"""Small random models, source batches and tokenizers for the core-library tests."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from seq2seq.config import ARCHITECTURES, ModelConfig
from seq2seq.model import Seq2Seq
from seq2seq.tokenizer import Tokenizer

SRC_VOCAB = 17
TGT_VOCAB = 19

# One small config per architecture, varied in depth and direction so every code path runs:
# a unidirectional 2-layer encoder, a decoder deeper than its encoder (top state repeated), untied outputs.
CONFIGS = {
    "context-init": ModelConfig(
        architecture="context-init",
        src_vocab_size=SRC_VOCAB,
        tgt_vocab_size=TGT_VOCAB,
        emb_dim=8,
        hidden_dim=16,
        enc_layers=2,
        dec_layers=2,
        bidirectional=False,
        dropout=0.3,
    ),
    "context-every-step": ModelConfig(
        architecture="context-every-step",
        src_vocab_size=SRC_VOCAB,
        tgt_vocab_size=TGT_VOCAB,
        emb_dim=8,
        hidden_dim=16,
        enc_layers=1,
        dec_layers=2,
        dropout=0.3,
        tie_embeddings=False,
    ),
    "attention": ModelConfig(
        architecture="attention",
        src_vocab_size=SRC_VOCAB,
        tgt_vocab_size=TGT_VOCAB,
        emb_dim=8,
        hidden_dim=16,
        enc_layers=2,
        dec_layers=1,
        dropout=0.3,
    ),
}
assert set(CONFIGS) == set(ARCHITECTURES)
# With seed 1 these EOS biases give each architecture a mix of EOS and max-length endings.
EOS_BIAS = {"context-init": 6.0, "context-every-step": 2.0, "attention": 6.0}


def random_model(cfg: ModelConfig, seed: int = 1, std: float = 0.8, eos_bias: float | None = None) -> Seq2Seq:
    """A model in eval() mode with weights wide enough that different sources decode differently.

    PyTorch's default init makes a tiny LSTM emit one token forever; N(0, std) weights and an
    EOS bias give varied tokens and a mix of EOS and max-length endings.
    """
    if eos_bias is None:
        eos_bias = EOS_BIAS[cfg.architecture]
    torch.manual_seed(seed)
    model = Seq2Seq(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, std)
        if cfg.tie_embeddings:
            model.decoder.out_bias[3] += eos_bias
        else:
            model.decoder.output.bias[3] += eos_bias
    return model.eval()


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models: one intra-op thread is much faster than two fighting over busy cores."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=ARCHITECTURES)
def arch(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def model(arch: str) -> Seq2Seq:
    return random_model(CONFIGS[arch])


def random_ids(n: int, vocab: int, generator: torch.Generator) -> list[int]:
    """``n`` ordinary piece ids (never pad/unk/bos/eos)."""
    return torch.randint(4, vocab, (n,), generator=generator).tolist()


def padded(sources: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Sources -> (B, S) padded ids and (B,) lengths."""
    width = max(len(s) for s in sources)
    src = torch.zeros(len(sources), width, dtype=torch.long)
    for i, s in enumerate(sources):
        src[i, : len(s)] = torch.tensor(s)
    return src, torch.tensor([len(s) for s in sources])


def letter_sentences(letters: str, n: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(letters) for _ in range(rng.randint(2, 8))) for _ in range(n)]


@pytest.fixture(scope="session")
def train_tokenizer(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Tokenizer]:
    """Train (once per alphabet) a SentencePiece model on space-separated letters."""
    cache: dict[str, Tokenizer] = {}
    root: Path = tmp_path_factory.mktemp("tokenizers")

    def make(letters: str) -> Tokenizer:
        if letters not in cache:
            cache[letters] = Tokenizer.train(letter_sentences(letters), root / letters, vocab_size=64)
        return cache[letters]

    return make
