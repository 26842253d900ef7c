"""One command from a user's pairs to a model the server serves, on a tiny corpus."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from service.app import create_app
from service.settings import Settings
from tests.training.conftest import isolated_main, reverse_pairs, write_tsv
from training import pipeline, select

SMALL = ["--architecture", "attention", "--emb-dim", "32", "--hidden-dim", "64", "--vocab-size", "40"]
SMALL += ["--dropout", "0.0", "--label-smoothing", "0.0", "--lr", "0.01", "--max-tokens", "500", "--epochs", "8"]


@pytest.fixture
def corpus(tmp_path: Path) -> dict[str, Path]:
    train = reverse_pairs(2000, seed=10)
    seen = {s for s, _ in train}
    val = reverse_pairs(100, seed=11, exclude=seen)
    return {"train": write_tsv(tmp_path / "train.tsv", train), "val": write_tsv(tmp_path / "val.tsv", val)}


async def test_pairs_to_a_served_model_with_one_command(corpus: dict[str, Path], tmp_path: Path) -> None:
    store = tmp_path / "store"
    argv = ["reverser", "--task", "translate", "--src", "xx", "--tgt", "yy"]
    argv += ["--train", str(corpus["train"]), "--val", str(corpus["val"]), "--model-store", str(store)]
    argv += ["--runs-dir", str(tmp_path / "runs"), *SMALL]
    with isolated_main():
        out = pipeline.main(argv)
    assert out == store / "reverser" / "1"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["task"] == "translate" and (manifest["source_lang"], manifest["target_lang"]) == ("xx", "yy")
    assert manifest["training"]["recipe"].startswith("python -m training.pipeline reverser --task translate")
    assert manifest["evaluation"]["beam"]["bleu"] > 90 and manifest["decoding"]["beam_size"] in (3, 5, 8)
    settings = Settings(model_store=store, threads=1, engine_process=False, restart_engines=False)
    app = create_app(settings, load_in_background=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            r = await client.post("/translate", json={"text": "a b c d", "source_lang": "xx", "target_lang": "yy"})
            assert r.status_code == 200, r.text
            assert r.json()["translations"][0]["text"] == "d c b a"
            info = (await client.get("/models/reverser")).json()
            assert info["status"] == "ready" and "trained on" in info["description"]
    with isolated_main():
        again = pipeline.main(argv)  # the run is done: the same command exports the next version
    assert again == store / "reverser" / "2"


def test_chat_needs_its_language(corpus: dict[str, Path]) -> None:
    with pytest.raises(SystemExit) as exc:
        pipeline.main(["bot", "--task", "chat", "--train", str(corpus["train"]), "--val", str(corpus["val"])])
    assert exc.value.code == 2


async def test_a_chatbot_with_mmi_ships_its_backward_model(corpus: dict[str, Path], tmp_path: Path) -> None:
    store, runs = tmp_path / "store", tmp_path / "runs"
    argv = ["bot", "--task", "chat", "--lang", "xx", "--mmi", "--model-store", str(store), "--runs-dir", str(runs)]
    argv += ["--train", str(corpus["train"]), "--val", str(corpus["val"]), *SMALL[:-1], "4"]
    with isolated_main():
        out = pipeline.main(argv)
    assert out is not None
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backward"]["file"] == "backward.safetensors"
    assert manifest["decoding"]["mmi_weight"] in select.MMI_WEIGHTS
    backward_run = json.loads((runs / "bot-backward" / "run.json").read_text())
    assert backward_run["args"]["reverse"] and backward_run["args"]["tokenizers_from"] == str(runs / "bot")
    settings = Settings(model_store=store, threads=1, engine_process=False, restart_engines=False)
    app = create_app(settings, load_in_background=False)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            r = await client.post("/chat", json={"message": "a b c", "beam_size": 3, "mmi_weight": 0.5})
            assert r.status_code == 200, r.text
            assert (await client.get("/models/bot")).json()["mmi_reranking"] is True


def test_mmi_is_for_chatbots(corpus: dict[str, Path]) -> None:
    with pytest.raises(SystemExit) as exc:
        pipeline.main(
            ["t", "--task", "translate", "--src", "a", "--tgt", "b", "--mmi", "--train", str(corpus["train"])]
        )
    assert exc.value.code == 2
