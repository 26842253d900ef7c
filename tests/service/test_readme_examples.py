"""The README's first examples print what the bundled models say today (the real model store)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
EXAMPLE = re.compile(r"curl -s localhost:8000(/\w+) -H 'content-type: application/json' \\\n  -d '(.*?)'\n# (\{.*\})\n")


def readme_examples() -> list[tuple[str, dict, str]]:
    """(route, body, the reply as the README prints it) for every curl example with its output."""
    return [(m.group(1), json.loads(m.group(2)), m.group(3)) for m in EXAMPLE.finditer(README)]


def test_the_readme_has_examples_with_outputs() -> None:
    assert readme_examples(), "the README's curl examples with '# {...}' outputs were not found"


@pytest.mark.parametrize(("route", "body", "printed"), readme_examples())
async def test_a_readme_example_prints_what_the_server_replies(route: str, body: dict, printed: str) -> None:
    model = re.search(r'"model":"([^"]+)"', printed)
    assert model is not None
    settings = Settings(models=[model.group(1)], threads=1, engine_process=False, restart_engines=False)
    app = create_app(settings, load_in_background=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            reply = (await client.post(route, json=body)).text
    # The README abbreviates with "...": every quoted piece must appear in the reply, in order.
    pieces = [p.strip(" ,") for p in printed.split("...")]
    position = 0
    for piece in (p for p in pieces if p.strip("{}[] ")):
        found = reply.find(piece.rstrip("}]"), position)
        assert found >= 0, f"README prints {piece!r}; the server replies {reply}"
        position = found


CHAT_TABLE = re.compile(r"<!-- chat-en examples -->\n\| message \| reply \|\n\|---\|---\|\n((?:\|.*\|\n)+)")


def chat_examples() -> list[tuple[str, str]]:
    table = CHAT_TABLE.search(README)
    assert table is not None, "the README's chat-en examples table was not found"
    rows = [line.strip("|").split(" | ") for line in table.group(1).splitlines()]
    return [(message.strip(), reply.strip()) for message, reply in rows]


async def test_the_readme_chat_examples_are_what_chat_en_replies() -> None:
    examples = chat_examples()
    assert len(examples) == 10
    settings = Settings(models=["chat-en"], threads=1, engine_process=False, restart_engines=False)
    app = create_app(settings, load_in_background=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            for message, printed in examples:
                body = {"message": message, "language": "en", "beam_size": 5}
                reply = (await client.post("/chat", json=body)).json()["reply"]
                assert reply == printed, (message, reply)
