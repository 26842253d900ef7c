"""int8 dynamic quantisation of a trained model, for CPU inference.

Weights are stored as int8 (per output channel for linear layers) and activations are
quantised per batch at run time, so the GEMMs run on the int8 kernels of fbgemm (x86) or
qnnpack (ARM). On a small CPU that roughly halves the decoder step at large batch and
cuts it by 2-5x at small batch (less memory to stream per step); the encoder's LSTM
gains less. The BLEU cost is measured per model with
``python -m training.evaluate --model-dir ... --quantize int8`` and recorded in the README.

The decoder's single-step LSTM normally calls ``torch.lstm_cell`` on the ``nn.LSTM``
weights, which cannot be quantised in place; :func:`quantize_int8` gives it one fused
linear layer per LSTM layer (``[W_ih | W_hh]``, ``b_ih + b_hh``) and turns a tied output
projection into its own linear layer, and then quantises every ``nn.Linear`` and
``nn.LSTM`` of a copy of the model. Embeddings, attention and softmax stay float32.
"""

from __future__ import annotations

import copy
import warnings
from typing import Literal, TypeVar, get_args

import torch
import torch.nn as nn
from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

from seq2seq.model import Seq2Seq

Quantization = Literal["none", "int8"]
QUANTIZATIONS: tuple[Quantization, ...] = get_args(Quantization)
M = TypeVar("M", bound=nn.Module)


def quantize_int8(model: Seq2Seq) -> Seq2Seq:
    """A float32 CPU copy of ``model`` with int8 weights and dynamically quantised activations."""
    model = copy.deepcopy(model).to("cpu", torch.float32).eval()
    decoder = model.decoder
    with torch.no_grad():
        cells = []
        for layer in range(model.cfg.dec_layers):
            w_ih, w_hh = getattr(decoder.lstm, f"weight_ih_l{layer}"), getattr(decoder.lstm, f"weight_hh_l{layer}")
            cell = nn.Linear(w_ih.size(1) + w_hh.size(1), w_ih.size(0))
            cell.weight.copy_(torch.cat([w_ih, w_hh], 1))
            cell.bias.copy_(getattr(decoder.lstm, f"bias_ih_l{layer}") + getattr(decoder.lstm, f"bias_hh_l{layer}"))
            cells.append(cell)
        decoder.step_cells = nn.ModuleList(cells)
        if model.cfg.tie_embeddings:
            vocab = nn.Linear(model.cfg.emb_dim, model.cfg.tgt_vocab_size)
            vocab.weight.copy_(decoder.embedding.weight)
            vocab.bias.copy_(decoder.out_bias)
            decoder.vocab = vocab
    return quantize_modules_int8(model)


def quantize_modules_int8(module: M) -> M:
    """``module`` (in place) with every child ``nn.Linear`` and ``nn.LSTM`` swapped for its int8 dynamic version."""
    with warnings.catch_warnings():
        # torch.ao marks its quantised-tensor constructors deprecated (in favour of torchao);
        # the dynamic int8 kernels themselves are the supported fbgemm/qnnpack ones.
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r".*quantize_per_channel.*deprecated", category=UserWarning)
        warnings.filterwarnings("ignore", message=r"torch\.ao\.quantization is deprecated", category=DeprecationWarning)
        return quantize_dynamic(
            module,
            {nn.Linear: per_channel_dynamic_qconfig, nn.LSTM: default_dynamic_qconfig},
            dtype=torch.qint8,
            inplace=True,
        )
