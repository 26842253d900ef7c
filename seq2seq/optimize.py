"""The inference form of a trained model: a fused decoder step, and optionally int8 weights.

:func:`optimize_for_inference` returns an eval-mode copy whose decoder step runs each LSTM
layer as ONE GEMM over ``[x; h]`` with ``[W_ih | W_hh]`` and ``b_ih + b_hh``, instead of
``torch.lstm_cell``'s two GEMMs and the sum of their outputs. The arithmetic is the same;
the training modules are left as they are.

With ``quantization="int8"`` (CPU only) it also applies dynamic int8 quantisation. Weights
are stored as int8 (per output channel for linear layers) and activations are quantised
per batch at run time, so the GEMMs run on the int8 kernels of fbgemm (x86) or qnnpack
(ARM). On a CPU that shortens the decoder step, most at small batch (less memory to stream
per step); the encoder's LSTM gains less (the README has the figures). The
attention query and the tied output projection get Linear layers of their own first, so
that they carry int8 weights too; embeddings, attention and softmax stay float32. The BLEU
cost is measured per model with ``python -m training.evaluate --model-dir ... --quantize
int8`` and recorded in the README.
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
DType = Literal["auto", "float32", "float16", "bfloat16"]  # auto: the serving default of the device
DTYPES: tuple[DType, ...] = get_args(DType)
M = TypeVar("M", bound=nn.Module)


def optimize_for_inference(model: Seq2Seq, quantization: Quantization = "none") -> Seq2Seq:
    """An eval-mode copy of ``model`` with the fused decoder step; with int8 weights, a float32 CPU copy."""
    model = copy.deepcopy(model).eval()
    if quantization == "int8":
        model = model.to("cpu", torch.float32)
    decoder = model.decoder
    lstm = decoder.lstm
    weight = lstm.weight_ih_l0
    with torch.no_grad():
        cells = []
        for layer in range(model.cfg.dec_layers):
            w_ih, w_hh = getattr(lstm, f"weight_ih_l{layer}"), getattr(lstm, f"weight_hh_l{layer}")
            cell = nn.Linear(w_ih.size(1) + w_hh.size(1), w_ih.size(0), device=weight.device, dtype=weight.dtype)
            cell.weight.copy_(torch.cat([w_ih, w_hh], 1))
            cell.bias.copy_(getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}"))
            cells.append(cell)
        decoder.step_cells = nn.ModuleList(cells)
        if quantization == "none":
            return model
        if model.cfg.architecture == "attention":
            query = nn.Linear(model.cfg.hidden_dim, model.cfg.hidden_dim, bias=False)
            query.weight.copy_(decoder.attn_proj.weight.t())  # query(h) = h W_a
            decoder.attn_query = query
        if model.cfg.tie_embeddings:
            vocab = nn.Linear(model.cfg.emb_dim, model.cfg.tgt_vocab_size)
            vocab.weight.copy_(decoder.embedding.weight)
            vocab.bias.copy_(decoder.out_bias)
            decoder.vocab = vocab
    return quantize_modules_int8(model)


def dtype_fits(quantization: Quantization, dtype: str) -> bool:
    """Whether weights and activations of ``dtype`` go with ``quantization``: int8 runs float32 activations."""
    return quantization != "int8" or dtype in ("auto", "float32")


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
