"""The pure parts of the chat and robustness reports: the lookup baseline, diversity, the choice of a default."""

from __future__ import annotations

import json
from pathlib import Path

from tests.tiny_models import make_tiny_store
from training import report
from training.chat_eval import distinct, nearest_question_answers
from training.robustness import choose, perturbed


def test_the_lookup_answers_with_the_nearest_training_question():
    train = [("오늘 날씨 좋다", "산책 가요"), ("너무 피곤해", "푹 쉬세요"), ("배고파", "뭐 먹을까요")]
    assert nearest_question_answers(train, ["오늘 날씨 진짜 좋다", "피곤해 죽겠어", "아 배고파"]) == [
        "산책 가요",
        "푹 쉬세요",
        "뭐 먹을까요",
    ]


def test_distinct_counts_unique_words_and_bigrams_over_all_replies():
    replies = ["I am fine", "I am here", ""]
    assert distinct(replies, 1) == round(4 / 6, 4)  # I, am, fine, here of six words
    assert distinct(replies, 2) == round(3 / 4, 4)  # (I am) twice, (am fine), (am here)
    assert distinct([""], 2) == 0.0


def val_report(bleu_g: float, bleu_b: float, caps: int) -> dict:
    return {"greedy": {"bleu": bleu_g, "cap_hits": caps}, "beam": {"bleu": bleu_b, "cap_hits": 0}}


def test_the_default_is_the_size_with_fewest_cap_hits_that_costs_no_bleu_on_val():
    val = {"0": val_report(30.0, 31.0, 5), "3": val_report(30.1, 31.0, 0), "4": val_report(30.0, 31.2, 1)}
    assert choose(val) == 3
    val["3"] = val_report(29.9, 31.5, 0)  # costs greedy BLEU: not chosen
    assert choose(val) == 4
    val["4"] = val_report(30.0, 30.9, 0)
    assert choose(val) == 0  # nothing is free: off


def test_perturbed_sources_are_lowercased_at_the_start_without_a_final_period():
    assert perturbed([("Ein Hund läuft.", "A dog runs."), ("Zwei Männer ", "Two men")]) == [
        ("ein Hund läuft", "A dog runs."),
        ("zwei Männer", "Two men"),
    ]


def test_the_readme_tables_render_what_the_manifests_hold(tmp_path: Path):
    store = make_tiny_store(tmp_path / "store")
    lengths = {
        "greedy": {"bleu": 30.0, "cap_hits": 4, "short": 1, "sentences": 9},
        "beam": {"bleu": 31.0, "cap_hits": 2, "short": 0, "sentences": 9},
    }
    fixed = {"greedy": {**lengths["greedy"], "cap_hits": 0}, "beam": {**lengths["beam"], "bleu": 31.5, "cap_hits": 0}}
    robustness = {"chosen": 3, "end_mark": ".", "setting": "3+.", "sets": {"val": {"0": lengths, "3+.": fixed}}}
    replies = {"bleu": 12.0, "chrf": 20.0, "distinct_1": 0.5, "distinct_2": 0.75, "copies_of_training_answers": 7}
    chat = {"test_set": "held-out 5% (9 pairs)", "lookup": replies, "greedy": replies, "beam": replies}
    beam = {
        "bleu": 9.0,
        "bleu_lc": 9.5,
        "chrf": 21.0,
        "decoding": {"beam_size": 8, "length_penalty": 1.2, "mmi_weight": 0.4},
    }
    evaluation = {"test_set": "held-out 5%", "sentences": 9, "beam": beam}
    chat_extra = {"chat_evaluation": chat, "evaluation": evaluation}
    for name, extra in (("translate-de-en", {"robustness": robustness}), ("chat-en", chat_extra)):
        path = store / name / "1" / "manifest.json"
        path.write_text(json.dumps({**json.loads(path.read_text()), **extra}))
    rows = report.robustness_table(store).splitlines()
    assert rows[2:] == [
        "| `translate-de-en` v1 | no-repeat 3, end mark `.` | val (9) | 4 → 0 | 1 → 1 | 30.00 → 30.00 | 2 → 0 | 0 → 0 "
        "| 31.00 → 31.50 |"
    ]
    models = {row.split(" | ")[0]: row for row in report.table(store).splitlines()[2:]}
    assert "| 9.0 / 9.5 | 21.0 | 8, α 1.2, MMI 0.4 |" in models["| `chat-en` v1"]  # beam reranked by its backward model
    assert "MMI" not in models["| `translate-de-en` v1"]
    chat_rows = report.chat_table(store).splitlines()[2:]
    assert [r.split(" | ")[2] for r in chat_rows] == ["nearest-question lookup", "model, greedy", "model, beam"]
    assert chat_rows[0].endswith("| 12.0 | 20.0 | 0.50 | 0.75 | 7 |")
