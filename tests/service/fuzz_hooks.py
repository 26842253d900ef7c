"""Schemathesis hooks for tests/service/test_fuzz.py (loaded through ``SCHEMATHESIS_HOOKS``).

JSON Schema states ranges, but not rules between fields or about the model a request reaches.
The server checks those (422 with the rule's words), and the positive cases drawn from the
schema keep them, so that "valid data is accepted" tests what the schema can say:

- ``n_best <= beam_size``, no ``sample`` with ``beam_size > 1``, ``min_length <= max_length``;
- ``top_k`` no larger than the vocabulary (``FUZZ_VOCAB_SIZE``: the test store's models);
- a deadline long enough to be met (``timeout`` of at least a second): a 504 is not a server error;
- ``return_attention`` only from attention models: a case that names a model does not ask for it
  (the test store has a model without attention, and the default of each pair has attention);
- ``mmi_weight`` only with beam search, from a model with a backward model: only ``/chat``
  (the test store's chat model has one, its translation models have none).
Negative cases are never filtered.
"""

from __future__ import annotations

import os
from typing import Any

import schemathesis
from schemathesis import GenerationMode

VOCAB_SIZE = int(os.environ.get("FUZZ_VOCAB_SIZE", "0"))


def breaks_a_rule(path: str, body: dict[str, Any]) -> bool:
    beam_size = body.get("beam_size", 1)
    max_length = body.get("max_length")
    return bool(
        body.get("n_best", 1) > beam_size
        or (body.get("sample") and beam_size > 1)
        or (max_length is not None and body.get("min_length", 0) > max_length)
        or (VOCAB_SIZE and body.get("top_k", 0) > VOCAB_SIZE)
        or (body.get("timeout") is not None and body["timeout"] < 1)
        or (body.get("return_attention") and body.get("model") is not None)
        or (body.get("mmi_weight") and (beam_size == 1 or path != "/chat"))
    )


@schemathesis.hook
def filter_case(ctx: schemathesis.HookContext, case: schemathesis.Case) -> bool:
    meta = case.meta
    if meta is not None and meta.generation.mode is GenerationMode.NEGATIVE:
        return True
    return not (isinstance(case.body, dict) and breaks_a_rule(case.path, case.body))
