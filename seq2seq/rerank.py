"""Maximum mutual information reranking of a beam's hypotheses (Li et al., 2016, "MMI-bidi").

A chat model trained on p(reply | message) ranks generic replies high: "I don't know" follows
almost any message. A backward model, trained on the same pairs the other way round, gives
p(message | reply), which is high only for replies that say something about this message.
Beam search keeps its ``beam_size`` hypotheses; each is scored by

    (1 - weight) * forward + weight * backward

where ``forward`` is the hypothesis' own length-normalised log-probability (what beam search
ranks by) and ``backward`` is log p(message | reply) per message piece (EOS included), and
the best ``n_best`` of them are returned in that order. Their ``score`` and ``normalized``
stay the forward model's.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from seq2seq.config import PAD_ID
from seq2seq.model import Seq2Seq, pad, teacher_forcing


@torch.inference_mode()
def sequence_logprobs(
    model: Seq2Seq, sources: Sequence[Sequence[int]], targets: Sequence[Sequence[int]]
) -> list[float]:
    """log p(target | source) of each pair under ``model``, EOS included, teacher-forced in one batch.

    Every source needs at least one piece; a target may be empty (then only its EOS counts).
    """
    device = next(model.parameters()).device
    lengths = torch.tensor([len(s) for s in sources])
    tgt_in, tgt_out = (t.to(device) for t in teacher_forcing(targets))
    logits = model(pad(sources).to(device), lengths, tgt_in).float()  # (B, T, V)
    token_logprobs = -F.cross_entropy(logits.transpose(1, 2), tgt_out, ignore_index=PAD_ID, reduction="none")
    return token_logprobs.sum(dim=1).tolist()


def mmi_order(forward: Sequence[float], backward: Sequence[float], weight: float) -> list[int]:
    """Indices of the hypotheses, best first, by ``(1 - weight) * forward + weight * backward``
    (ties keep the forward order)."""
    combined = [(1 - weight) * f + weight * b for f, b in zip(forward, backward, strict=True)]
    return sorted(range(len(combined)), key=lambda i: -combined[i])


def backward_scores(backward: Seq2Seq, message: Sequence[int], replies: Sequence[Sequence[int]]) -> list[float]:
    """log p(message | reply) per message piece (EOS included) under ``backward``, for each reply;
    an empty reply, which the backward model cannot read, scores -inf."""
    readable = [i for i, r in enumerate(replies) if r]
    scores = [float("-inf")] * len(replies)
    if readable:
        logprobs = sequence_logprobs(backward, [replies[i] for i in readable], [message] * len(readable))
        for i, lp in zip(readable, logprobs, strict=True):
            scores[i] = lp / (len(message) + 1)
    return scores
