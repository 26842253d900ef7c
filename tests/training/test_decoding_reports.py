"""The pure parts of the chat and robustness reports: the lookup baseline, diversity, the choice of a default."""

from __future__ import annotations

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


def report(bleu_g: float, bleu_b: float, caps: int) -> dict:
    return {"greedy": {"bleu": bleu_g, "cap_hits": caps}, "beam": {"bleu": bleu_b, "cap_hits": 0}}


def test_the_default_is_the_size_with_fewest_cap_hits_that_costs_no_bleu_on_val():
    val = {"0": report(30.0, 31.0, 5), "3": report(30.1, 31.0, 0), "4": report(30.0, 31.2, 1)}
    assert choose(val) == 3
    val["3"] = report(29.9, 31.5, 0)  # costs greedy BLEU: not chosen
    assert choose(val) == 4
    val["4"] = report(30.0, 30.9, 0)
    assert choose(val) == 0  # nothing is free: off


def test_perturbed_sources_are_lowercased_at_the_start_without_a_final_period():
    assert perturbed([("Ein Hund läuft.", "A dog runs."), ("Zwei Männer ", "Two men")]) == [
        ("ein Hund läuft", "A dog runs."),
        ("zwei Männer", "Two men"),
    ]
