"""POST /translate: one text or a batch of texts through a translation model."""

from __future__ import annotations

from fastapi import APIRouter, Request

from seq2seq.generation import Hypothesis
from seq2seq.tokenizer import Tokenizer
from service.api.errors import ERROR_RESPONSES
from service.api.inference import check_attention, prepare, submit, wait_all
from service.auth import client_name
from service.deps import RegistryDep, SettingsDep
from service.errors import InvalidRequest
from service.schemas import Alternative, Attention, TranslateRequest, TranslateResponse, Translation, Usage

router = APIRouter(tags=["translate"])
ATTENTION_DECIMALS = 3


def attention(hypothesis: Hypothesis, source: list[str], tokenizer: Tokenizer) -> Attention | None:
    """The hypothesis's attention matrix with its axes' pieces, when the request asked for it."""
    if hypothesis.attention is None:
        return None
    weights = [[round(w, ATTENTION_DECIMALS) for w in row] for row in hypothesis.attention]
    return Attention(source=source, target=tokenizer.pieces(hypothesis.tokens), weights=weights)


@router.post("/translate", response_model=TranslateResponse, responses=ERROR_RESPONSES)
async def translate(body: TranslateRequest, request: Request, registry: RegistryDep, settings: SettingsDep):
    """Translate ``text`` (or each of ``texts``). All texts of a request join the same batch."""
    texts = body.inputs
    if len(texts) > settings.max_texts:
        raise InvalidRequest(f"{len(texts)} texts in one request; the limit is {settings.max_texts}")
    entry = registry.resolve("translate", body.model, body.source_lang, body.target_lang, " ".join(texts))
    request.state.model = entry.name
    if body.return_attention:
        check_attention(entry)
    fields = ["text"] if body.text is not None else [f"texts[{i}]" for i in range(len(texts))]
    prepared = prepare(
        entry,
        registry,
        texts,
        fields,
        body,
        settings,
        return_attention=body.return_attention,
        client=client_name(request),
    )
    request.state.model_version = prepared.version
    results = await wait_all(prepared, submit(prepared), request)
    tokenizer = prepared.engine.info.target_tokenizer
    translations = []
    for hyps, req in zip(results, prepared.requests, strict=True):
        best = hyps[0]
        source = prepared.engine.info.source_tokenizer.pieces(req.src_ids) if body.return_attention else []
        alternatives = None
        if body.n_best > 1:
            alternatives = [
                Alternative(text=tokenizer.decode(h.tokens), score=h.score, attention=attention(h, source, tokenizer))
                for h in hyps
            ]
        translations.append(
            Translation(
                text=tokenizer.decode(best.tokens),
                score=best.score,
                tokens=len(best.tokens),
                finish_reason=best.finish_reason.value,
                alternatives=alternatives,
                attention=attention(best, source, tokenizer),
            )
        )
    output_tokens = sum(t.tokens for t in translations)
    request.state.generated_tokens = output_tokens
    return TranslateResponse(
        model=entry.name,
        version=prepared.version,
        source_lang=entry.manifest.get("source_lang"),
        target_lang=entry.manifest.get("target_lang"),
        translations=translations,
        usage=Usage(input_tokens=prepared.input_tokens, output_tokens=output_tokens),
    )
