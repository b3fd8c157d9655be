"""The data splits of the SmolLM2 proofs: nothing evaluated was trained on, in either language; the English control
lines are the Italian lines' translations; the tweet splits are balanced and disjoint; the language detector."""

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "proof"))

import lm_analogy  # noqa: E402
import lm_data  # noqa: E402
from lm_eval import language_of, reply_stats  # noqa: E402

EVALUATED = lm_data.HELD_OUT + lm_data.VALIDATION


@pytest.mark.parametrize("language", ["english", "italian"])
def test_no_evaluated_category_or_line_is_trained_on(language):
    assert not set(lm_data.training_categories(language)) & set(EVALUATED)
    evaluated_lines = set(lm_data.lines(language, EVALUATED))
    assert evaluated_lines and not set(lm_data.training_lines(language)) & evaluated_lines
    trained_pairs = lm_data.pairs(language, lm_data.training_categories(language))
    assert not {p for p, _ in trained_pairs} & {p for p, _ in lm_data.pairs(language, lm_data.HELD_OUT)}


def test_evaluated_categories_are_translations_conversation_by_conversation():
    english, italian = lm_data.conversations("english"), lm_data.conversations("italian")
    for category in EVALUATED:
        assert [len(c) for c in english[category]] == [len(c) for c in italian[category]], category
    assert len(lm_data.pairs("italian", lm_data.HELD_OUT)) == len(lm_data.pairs("english", lm_data.HELD_OUT)) > 100


def test_long_pairs_are_left_out():
    every = lm_data.pairs("english", lm_data.training_categories("english"))
    assert every and all(len(p) + len(r) <= lm_data.MAX_PAIR_CHARS for p, r in every)


def test_tweet_splits_are_balanced_disjoint_and_keep_evaluated_tweets_out_of_the_lm_text():
    sizes = {"airline": {"train": 30, "val": 5, "test": 10}, "apple": {"train": 6, "val": 5, "test": 9}}
    splits = lm_data.sentiment_splits(sizes, 200)
    for topic, per in splits.items():
        seen = set()
        for split, per_class in sizes[topic].items():
            rows = per[split]
            assert sorted(label for _, label in rows) == sorted(list(lm_data.SENTIMENTS) * per_class)
            texts = {t for t, _ in rows}
            assert not texts & seen
            seen |= texts
        evaluated = {t for s in ("val", "test") for t, _ in per[s]}
        assert len(per["lm"]) == 200 and not set(per["lm"]) & evaluated
    assert splits == lm_data.sentiment_splits(sizes, 200)  # fixed: the same for every training seed
    with pytest.raises(ValueError, match="apple: 10000 negative tweets for train but only 778 left"):
        lm_data.sentiment_splits({"airline": {"train": 1}, "apple": {"train": 10_000}}, 1)


def test_mangled_emoji_are_cut_out_of_tweets_and_accented_letters_stay():
    assert lm_data.clean_tweet("@united BEST!!_\x99\xc8\x8f_\x99\xc8\x8f thanks") == "@united BEST!! thanks"
    assert lm_data.clean_tweet("Caf\xe9 \xe0 la mode") == "Caf\xe9 \xe0 la mode"
    assert lm_data.clean_tweet("_\x99\xc8\x8f") == ""
    for by_label in lm_data.tweets_by_topic().values():
        for texts in by_label.values():
            assert texts and all(t and not re.search(r"[\x80-\x9f]", t) for t in texts)


def test_topic_splits_keep_every_test_message_and_its_translation_out_of_training():
    rows = lm_analogy.topic_rows()
    for lang, splits in rows.items():
        trained = {u for u, _ in splits["train"]}
        evaluated = [u for split in ("val", "test") for u, _ in splits[split]]
        assert evaluated and not trained & set(evaluated)
        assert {t for _, t in splits["test"]} == set(lm_analogy.TOPICS)
        labels = {}
        for split_rows in splits.values():
            for u, t in split_rows:
                assert labels.setdefault(u, t) == t  # one topic per message
    # the translation of an evaluated Italian message (the English line at the same place) is never trained on
    english_trained = {u for u, _ in rows["english"]["train"]}
    for split in ("val", "test"):
        evaluated = set(rows["italian"][split])
        for topic in lm_analogy.TOPICS:
            for en_conv, it_conv in zip(lm_data.conversations("english")[topic], lm_data.conversations("italian")[topic]):
                for en, it in zip(en_conv, it_conv):
                    if (it, topic) in evaluated:
                        assert en not in english_trained, (it, en)
    assert rows == lm_analogy.topic_rows()
    assert all(t not in lm_data.training_categories("italian") for t in lm_analogy.TOPICS)


def test_topic_lm_text_has_the_training_messages_unlabelled_and_no_evaluated_message():
    setting, rows = lm_analogy.language_setting(smoke=False), lm_analogy.topic_rows()
    for lang, text in setting.lm_text.items():
        assert {u for u, _ in rows[lang]["train"]} <= set(text)
        assert not {u for split in ("val", "test") for u, _ in rows[lang][split]} & set(text)
        assert not set(lm_analogy.TOPICS) & set(text)  # no label as a line of its own


def test_parallel_training_lines_follow_the_other_languages_categories_and_counts():
    english = lm_data.parallel_training_lines("english", "italian")
    italian = lm_data.training_lines("italian")
    assert abs(len(english) - len(italian)) < 0.1 * len(italian)
    held = set(lm_data.lines("english", lm_data.HELD_OUT + lm_data.VALIDATION))
    assert not held & set(english)
    assert set(english) <= set(lm_data.lines("english", lm_data.training_categories("italian")))


def test_language_of_and_reply_stats():
    assert language_of("Non lo so, ma il computer è molto veloce.") == "italian"
    assert language_of("I do not know what the computer is for.") == "english"
    assert language_of("12345 !!!") == "unknown"
    stats = reply_stats([{"text": "Sono un robot e non ho un corpo.", "ended": True},
                         {"text": "I am a robot.", "ended": False}], "italian")
    assert stats == {"in_language": 0.5, "ended": 0.5}


def test_shift_geometry_matches_the_shifts_computed_directly(tmp_path):
    """The analogy's diagnostic derives ‖plus − minus‖ from inspect's norms and pairwise cosines; check it against
    the vectors themselves."""
    import torch
    from conftest import write_model

    base = torch.zeros(2, 3)
    vectors = {"task": torch.tensor([[3.0, 0, 0], [0, 4, 0]]), "plus": torch.tensor([[1.0, 2, 0], [0, 0, 2]]),
               "minus": torch.tensor([[0.0, 1, 1], [1, 0, 0]])}
    folders = {name: write_model(tmp_path / name, {"w": v + base}) for name, v in vectors.items()}
    g = lm_analogy.shift_geometry(write_model(tmp_path / "base", {"w": base}), folders["task"],
                                  {"analogy": (folders["plus"], folders["minus"])})
    shift = (vectors["plus"] - vectors["minus"]).flatten()
    assert g["task_norm"] == pytest.approx(5.0)
    assert g["analogy"]["norm"] == pytest.approx(float(shift.norm()))  # ‖(1, 1, −1, −1, 0, 2)‖ = √8
    assert g["analogy"]["norm_vs_task"] == pytest.approx(8 ** 0.5 / 5)
    assert g["analogy"]["lm_vector_cosine"] == pytest.approx(2 / (3 * 3 ** 0.5))  # plus·minus = 2
