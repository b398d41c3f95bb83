"""The learned urgency model: training, prediction, explanations, the corpus files it reads, and
the rule condition that turns its probabilities into points."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailpipe import config as configuration
from mailpipe.message import parse
from mailpipe.metrics import Metrics
from mailpipe.store.sqlite import SQLiteStore
from mailpipe.triage import corpus, model, rules, vocabulary
from mailpipe.triage.context import Context
from mailpipe.triage.context import document as context_document
from mailpipe.triage.learning import Learner
from mailpipe.triage.model import (
    MAX_CHARS,
    Example,
    ModelError,
    Prediction,
    UrgencyModel,
    clipped,
    features,
    new_classifier,
    paragraphs,
    train,
)
from mailpipe.triage.score import evaluate

NOW = datetime(2026, 11, 24, 5, 0, tzinfo=UTC)

SMALL = [
    ("critical", "全ての配信が止まっています。顧客全員に届いていません。"),
    ("critical", "顧客リストが全て消えてしまいました。"),
    ("critical", "All our subscribers are gone, the list is empty."),
    ("critical", "Every API call returns HTTP 500 for all our users."),
    ("high", "請求が二重になっています。返金してください。"),
    ("high", "ログインできません。今日の配信ができません。"),
    ("high", "I was charged twice this month, please refund."),
    ("high", "I cannot log in and my campaign is blocked."),
    ("normal", "SPFレコードの設定方法を教えてください。"),
    ("normal", "配信予約のやり方を教えてください。"),
    ("normal", "How do I set up DKIM for my domain?"),
    ("normal", "How do I export my list as CSV?"),
    ("low", "いつもありがとうございます。返信は不要です。"),
    ("low", "ご対応ありがとうございました。解決しました。"),
    ("low", "Thanks a lot, all fixed. No reply needed."),
    ("low", "Thank you for the quick help, great service."),
]


@pytest.fixture(scope="module")
def small_model() -> UrgencyModel:
    return train([Example(text, level) for level, text in SMALL], rules.LEVELS)


def test_a_model_trained_on_labelled_mail_gives_each_level_a_probability(small_model: UrgencyModel) -> None:
    prediction = small_model.predict("顧客リストが消えました")
    assert set(prediction.probabilities) == set(rules.LEVELS)
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0)
    assert prediction.level == "critical"


def test_the_model_reads_wording_it_was_not_trained_on_by_its_pieces(small_model: UrgencyModel) -> None:
    assert small_model.predict("Thanks, no reply needed").level == "low"
    assert small_model.predict("設定方法を教えてください").level == "normal"


def test_the_model_names_the_ngrams_that_weighed_most_towards_a_level(small_model: UrgencyModel) -> None:
    reasons = small_model.predict("The list is empty, all subscribers are gone").reasons(["critical"])
    assert reasons and all(reason in "the list is empty, all subscribers are gone" for reason in reasons)


def test_japanese_reasons_are_pieces_of_the_text_without_a_tokenizer(small_model: UrgencyModel) -> None:
    reasons = small_model.predict("リストが全て消えてしまいました").reasons(["critical"])
    assert reasons and all(reason in "リストが全て消えてしまいました" for reason in reasons)


def test_of_ngrams_that_weigh_the_same_the_longest_explains() -> None:
    terms = ["につい", "について", "xyz"]
    rows = np.array([[1.0, 1.0, 1.0, len(term)] for term in terms])  # idf, coefficient, telling, length
    prediction = Prediction({"critical": 1.0}, np.arange(3), np.array([1.0, 1.0, 0.5]), rows, terms)
    assert prediction.reasons(["critical"], 2) == ["について", "xyz"]


def test_of_ngrams_that_weigh_the_same_and_are_as_long_the_first_in_the_vocabulary_explains() -> None:
    terms = ["zebra", "koala"]
    rows = np.array([[1.0, 1.0, 1.0, 5.0], [1.0, 1.0, 1.0, 5.0]])  # idf, coefficient, telling, length
    for columns in ([0, 1], [1, 0]):  # the order a message's terms are read in depends on hashes
        prediction = Prediction({"critical": 1.0}, np.array(columns), np.array([1.0, 1.0]), rows[columns], terms)
        assert prediction.reasons(["critical"], 1) == ["zebra"]


def test_text_with_no_known_ngram_falls_back_to_the_prior(small_model: UrgencyModel) -> None:
    prediction = small_model.predict("§§§")
    assert sum(prediction.probabilities.values()) == pytest.approx(1.0)
    assert prediction.reasons(["critical"]) == []


def test_training_needs_examples_of_every_level() -> None:
    with pytest.raises(ModelError, match="'low'"):
        train([Example(text, level) for level, text in SMALL if level != "low"], rules.LEVELS)


def _scikit_learns(examples: list[tuple[str, str]]) -> Callable[[str], dict[str, float]]:
    """The probabilities scikit-learn itself gives, fitted as ``train`` fits, for comparison."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    vectorizer = TfidfVectorizer(analyzer=lambda terms: terms, min_df=2, sublinear_tf=True)
    classifier = new_classifier()
    classifier.fit(vectorizer.fit_transform([features(text) for _, text in examples]),
                   [level for level, _ in examples])

    def probabilities(text: str) -> dict[str, float]:
        found = classifier.predict_proba(vectorizer.transform([features(text)]))[0]
        return dict(zip(classifier.classes_, found, strict=True))

    return probabilities


@pytest.fixture(scope="module")
def small_reference() -> Callable[[str], dict[str, float]]:
    return _scikit_learns(SMALL)


# Text made of the small model's own wording, cut anywhere and mixed with what it never saw.
_PIECES = st.sampled_from([text for _, text in SMALL] + ["w:", "w:ok", "  ", "\n", "Ｆｕｌｌ", "ｶﾀｶﾅ", "§", "\udcff"])
_TEXTS = st.lists(st.one_of(_PIECES.flatmap(lambda piece: st.sampled_from([piece, piece[: len(piece) // 2],
                                                                         piece[len(piece) // 3:]])),
                            st.text(max_size=8)), max_size=12).map("".join)


@settings(derandomize=True, deadline=None, max_examples=300, database=None)
@given(_TEXTS)
def test_the_prediction_matches_scikit_learns_own(small_model: UrgencyModel,
                                                  small_reference: Callable[[str], dict[str, float]],
                                                  text: str) -> None:
    assert small_model.predict(text).probabilities == pytest.approx(small_reference(text), abs=1e-12)


@settings(derandomize=True, deadline=None, max_examples=200, database=None)
@given(_TEXTS, _TEXTS)
def test_a_message_is_read_from_the_rules_folded_text_as_from_its_own(small_model: UrgencyModel, subject: str,
                                                                      body: str) -> None:
    raw = (f"From: a@example.org\r\nSubject: {' '.join(subject.split())}\r\n"
           f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode("utf-8", "surrogateescape")
    context = Context(parse(raw), NOW, model=small_model)
    text = context_document(context.message.subject, context.message.read_text, context.message.is_reply)
    assert context.urgency is not None
    assert context.urgency.probabilities == small_model.predict(text).probabilities


def test_a_term_that_is_both_an_ngram_and_a_word_counts_both() -> None:
    examples = [(level, f"{text} w:ok ok") for level, text in SMALL]
    model = train([Example(text, level) for level, text in examples], rules.LEVELS)
    probe = "w:ok, ok? w:okay"
    assert model.predict(probe).probabilities == pytest.approx(_scikit_learns(examples)(probe), abs=1e-12)


@settings(derandomize=True, deadline=None, max_examples=300, database=None)
@given(_TEXTS)
def test_the_vocabulary_counts_a_texts_known_terms_as_counting_its_features_would(small_model: UrgencyModel,
                                                                                  text: str) -> None:
    vocabulary, folded = small_model._vocabulary, model._folded(text)
    columns, counts = vocabulary.counts(folded, model._WORD.findall(folded))
    expected, expected_counts = vocabulary.counted(features(text))
    assert dict(zip(columns.tolist(), counts.tolist(), strict=True)) == \
        dict(zip(expected.tolist(), expected_counts.tolist(), strict=True))


@settings(derandomize=True, deadline=None, max_examples=200, database=None)
@given(st.sets(st.integers(-(2**63), 2**63 - 1).filter(bool), max_size=300), st.lists(st.integers(-(2**63), 2**63 - 1)))
def test_the_vocabularys_table_finds_every_number_it_holds_and_no_other(held: set[int], others: list[int]) -> None:
    numbers = np.array(sorted(held), dtype=np.int64)
    table = vocabulary._Table(numbers, np.arange(len(numbers), dtype=np.int64))  # a small table: slots are shared
    wanted = np.array([*held, *others], dtype=np.int64)
    expected = [sorted(held).index(n) if n in held else -1 for n in wanted.tolist()]
    assert table.find(wanted).tolist() == expected


def test_a_vocabulary_too_large_for_numbers_predicts_as_the_numeric_one_does() -> None:
    alphabet = [chr(0x4E00 + n) for n in range(6300)]  # more characters than five fit in 63 bits
    examples = [(level, f"{text}{''.join(alphabet[n::4])}") for n, (level, text) in enumerate(SMALL)]
    large = train([Example(text, level) for level, text in examples], rules.LEVELS)
    assert not large._vocabulary.numeric
    probe = f"{SMALL[0][1]} {''.join(alphabet[:200])} all our subscribers"
    assert large.predict(probe).probabilities == pytest.approx(_scikit_learns(examples)(probe), abs=1e-12)


def test_the_model_reads_the_start_and_the_end_of_a_long_mail() -> None:
    log = "".join(f"550 5.7.1 <user{n}@example.jp>: Message rejected\n" for n in range(200))
    text = f"Bounces\nHere is the log:\n{log}None of our 30,000 subscribers got anything since 9:00."
    assert len(text) > MAX_CHARS
    assert {"w:bounces", "w:subscribers"} <= set(features(text))
    assert len(clipped(text)) == MAX_CHARS and clipped(clipped(text)) == clipped(text)


def test_a_text_that_folding_lengthens_is_read_clipped_still() -> None:
    ligatures = "ﷺ" * MAX_CHARS  # NFKC makes each one eighteen characters
    assert len(model._folded(ligatures)) == MAX_CHARS


def test_the_shipped_corpus_loads_with_every_level() -> None:
    from mailpipe.data import shipped

    examples = corpus.load([shipped("rules") / "corpus"])
    assert {example.level for example in examples} == set(rules.LEVELS)
    assert len(examples) >= 600


def test_corpus_entries_are_read_as_triage_reads_mail() -> None:
    entry = {"level": "low", "subject": "Re: 障害について", "encoding": "html",
             "body": "<p>ありがとうございました。</p><blockquote>全て消えました</blockquote>\n> 全て消えました"}
    assert corpus.entry_document(entry) == "ありがとうございました。"


def test_a_corpus_entry_with_in_reply_to_is_read_as_the_reply_it_is() -> None:
    entry = {"level": "high", "subject": "Invoice question", "headers": {"In-Reply-To": "<m0@example.test>"},
             "body": "Still wrong.\n\nFrom: Support <support@example.test>\nSent: Monday\n\nWe fixed the invoice."}
    assert corpus.entry_document(entry) == parse(corpus.message(entry)).read_text == "Still wrong."


def test_a_broken_corpus_file_is_refused_naming_file_entry_and_reason(tmp_path: Path) -> None:
    (tmp_path / "desk.toml").write_text('[[mail]]\nlevel = "urgent"\nsubject = "x"\nbody = "y"\n'
                                        '[[mail]]\nlevel = "low"\nsubject = "x"\nbody = "y"\ncolour = "red"\n')
    with pytest.raises(ModelError) as refused:
        corpus.load([tmp_path])
    assert any("desk.toml: mail #1: level 'urgent'" in p for p in refused.value.problems)
    assert any("desk.toml: mail #2: unknown keys colour" in p for p in refused.value.problems)


def _ruleset(tmp_path: Path, condition: str, key: str = "model") -> rules.RuleSet:
    (tmp_path / "levels.toml").write_text("[levels]\ncritical = 12\nhigh = 5\nnormal = 0\n")
    (tmp_path / "model.toml").write_text(f'[[rule]]\nname = "MODEL_CRITICAL"\ndescription = "model"\nscore = 12\n'
                                         f"{key} = {condition}\n")
    return rules.load(tmp_path)


def _context(text: str, model: UrgencyModel | None) -> Context:
    raw = f"From: a@example.org\r\nSubject: help\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n{text}\r\n"
    return Context(parse(raw.encode()), NOW, model=model)


def test_a_model_rule_fires_on_the_probability_and_shows_what_weighed(tmp_path: Path,
                                                                       small_model: UrgencyModel) -> None:
    ruleset = _ruleset(tmp_path, '{ level = "critical", at_least = 0.4 }')
    verdict = evaluate(ruleset, _context("顧客リストが全て消えてしまいました", small_model))
    assert verdict.level == "critical"
    assert verdict.hits[0].matched.startswith("p(critical)=")
    assert '"' in verdict.hits[0].matched


def test_a_model_rule_on_several_levels_adds_their_probabilities(tmp_path: Path, small_model: UrgencyModel) -> None:
    ruleset = _ruleset(tmp_path, '{ levels = ["critical", "high"], at_least = 0.5 }')
    assert evaluate(ruleset, _context("I was charged twice, refund", small_model)).rule_names == ("MODEL_CRITICAL",)
    assert evaluate(ruleset, _context("Thanks, no reply needed", small_model)).rule_names == ()


def test_a_model_rule_ahead_of_a_level_fires_only_when_its_own_is_the_likelier(tmp_path: Path,
                                                                                small_model: UrgencyModel) -> None:
    ruleset = _ruleset(tmp_path, '{ level = "low", at_least = 0.05, ahead_of = ["critical"] }')
    calm = _context("Thanks, no reply needed", small_model)
    emergency = _context("顧客リストが全て消えてしまいました", small_model)
    assert emergency.urgency is not None and emergency.urgency.probabilities["low"] >= 0.05
    assert evaluate(ruleset, calm).rule_names == ("MODEL_CRITICAL",)
    assert evaluate(ruleset, emergency).rule_names == ()


def test_a_model_rule_never_fires_when_the_model_is_off(tmp_path: Path) -> None:
    ruleset = _ruleset(tmp_path, '{ level = "critical", at_least = 0.01 }')
    assert evaluate(ruleset, _context("顧客リストが全て消えてしまいました", None)).hits == ()


@pytest.mark.parametrize(("condition", "reason"), [
    ('{ level = "urgent", at_least = 0.5 }', "level 'urgent'"),
    ('{ level = "critical", at_least = 1.5 }', "at_least must be a probability"),
    ('{ level = "critical" }', "must be {"),
    ('{ level = "critical", levels = ["high"], at_least = 0.5 }', "must be {"),
    ('{ level = "low", at_least = 0.3, ahead_of = ["urgent"] }', "level 'urgent'"),
    ('{ level = "low", at_least = 0.3, ahead_of = ["low"] }', "ahead_of must name levels other"),
    ('{ level = "low", at_least = 0.3, ahead_of = [] }', "non-empty array"),
])
def test_a_malformed_model_condition_is_refused_naming_the_rule(tmp_path: Path, condition: str, reason: str) -> None:
    with pytest.raises(rules.RulesError) as refused:
        _ruleset(tmp_path, condition)
    assert "rule MODEL_CRITICAL: model:" in str(refused.value) and reason in str(refused.value)


BURIED = "How do I export my list as CSV?\n\n顧客リストが全て消えてしまいました。\n\nHow do I set up DKIM?"


def test_each_paragraph_is_read_after_the_first_line() -> None:
    assert paragraphs("Subject\nfirst\nstill first\n\n  \n second \n\u3000\nthird") == [
        "Subject\nfirst\nstill first", "Subject\nsecond", "Subject\nthird"]
    assert paragraphs("Subject only") == []


def test_a_passage_is_the_paragraph_read_likeliest_at_the_level(small_model: UrgencyModel) -> None:
    passage = small_model.passages(f"help\n{BURIED}", [("critical",)])[("critical",)]
    assert passage.text == "help\n顧客リストが全て消えてしまいました。"
    assert passage.probability == small_model.predict(passage.text).probabilities["critical"]
    assert passage.probability > small_model.predict(f"help\n{BURIED}").probabilities["critical"]
    assert passage.excerpt == "顧客リストが全て消えてしまいました。"


def test_a_passage_rule_fires_on_an_emergency_told_in_passing_and_shows_its_paragraph(
        tmp_path: Path, small_model: UrgencyModel) -> None:
    ruleset = _ruleset(tmp_path, '{ level = "critical", at_least = 0.5 }', key="passage")
    verdict = evaluate(ruleset, _context(BURIED.replace("\n", "\r\n"), small_model))
    assert verdict.rule_names == ("MODEL_CRITICAL",)
    assert verdict.hits[0].matched.startswith("p(critical)=")
    assert verdict.hits[0].matched.endswith(' in "顧客リストが全て消えてしまいました。"')
    assert evaluate(ruleset, _context("How do I export my list as CSV?\r\n\r\nThanks", small_model)).hits == ()


def test_a_passage_rule_never_fires_when_the_model_is_off(tmp_path: Path) -> None:
    ruleset = _ruleset(tmp_path, '{ level = "critical", at_least = 0.01 }', key="passage")
    assert evaluate(ruleset, _context(BURIED.replace("\n", "\r\n"), None)).hits == ()


def test_a_passage_condition_takes_no_rival_levels(tmp_path: Path) -> None:
    with pytest.raises(rules.RulesError, match=r"rule MODEL_CRITICAL: passage: must be \{"):
        _ruleset(tmp_path, '{ level = "critical", at_least = 0.5, ahead_of = ["low"] }', key="passage")


def test_each_level_set_passage_rules_ask_for_is_read_once(tmp_path: Path, small_model: UrgencyModel) -> None:
    ruleset = _rules_each_with(tmp_path, "passage", ['{ level = "critical", at_least = 0.8 }',
                                                     '{ level = "critical", at_least = 0.9 }',
                                                     '{ levels = ["critical", "high"], at_least = 0.7 }'])
    assert ruleset.passages == ((("critical",), (), 0.0), (("critical",), (), 0.0), (("critical", "high"), (), 0.0))
    assert small_model.predict("help").passing(ruleset.passages) == [("critical",), ("critical", "high")]


def test_a_passage_rules_model_condition_gates_the_reading_of_paragraphs(tmp_path: Path,
                                                                         small_model: UrgencyModel) -> None:
    (tmp_path / "levels.toml").write_text("[levels]\ncritical = 10\nhigh = 6\nnormal = 2\n")
    (tmp_path / "model.toml").write_text('[[rule]]\nname = "M"\ndescription = "d"\nscore = 1\n'
                                         'model = { level = "critical", at_least = 0.3 }\n'
                                         'passage = { level = "critical", at_least = 0.8 }\n')
    asked = rules.load(tmp_path).passages
    assert asked == ((("critical",), ("critical",), 0.3),)
    assert small_model.predict("顧客リストが全て消えてしまいました。").passing(asked) == [("critical",)]
    assert small_model.predict("Thanks, no reply needed.").passing(asked) == []


def _rules_each_with(tmp_path: Path, key: str, conditions: list[str]) -> rules.RuleSet:
    """A rule M0, M1, … for each condition, under ``key``, and a keyword rule beside them."""
    (tmp_path / "levels.toml").write_text("[levels]\ncritical = 10\nhigh = 6\nnormal = 2\n")
    (tmp_path / "model.toml").write_text("\n".join(
        f'[[rule]]\nname = "M{n}"\ndescription = "d"\nscore = 1\n{key} = {condition}\n'
        for n, condition in enumerate(conditions)))
    (tmp_path / "words.toml").write_text('[[rule]]\nname = "W"\ndescription = "d"\nscore = 1\nany = ["x"]\n')
    return rules.load(tmp_path)


def test_a_correction_recorded_after_the_daemons_loop_closed_is_kept_for_the_next_start(tmp_path: Path) -> None:
    async def start() -> Learner:
        return Learner(configuration.load(None).triage, SQLiteStore(tmp_path / "store.sqlite"), Metrics())

    learner = asyncio.run(start())
    learner.learn()  # a store thread finishing a desk command at shutdown: no error to fail it with



def test_a_ruleset_lists_the_level_sets_its_model_rules_explain_from_the_least_probability(tmp_path: Path) -> None:
    ruleset = _rules_each_with(tmp_path, "model", ['{ level = "critical", at_least = 0.5 }',
                                                   '{ level = "critical", at_least = 0.35 }',
                                                   '{ levels = ["critical", "high"], at_least = 0.45 }'])
    assert ruleset.explained == ((("critical",), 0.35), (("critical", "high"), 0.45))


def test_a_reading_explains_only_the_level_sets_that_reach_their_probability(small_model: UrgencyModel) -> None:
    prediction = small_model.predict("顧客リストが全て消えてしまいました。")
    reading = prediction.reading(((("critical",), 0.5), (("low",), 0.5)))
    assert prediction.of(["critical"]) >= 0.5 > prediction.of(["low"])
    assert reading.explained == {("critical",): prediction.reasons(["critical"])}


def test_a_reading_refuses_to_explain_a_level_set_it_was_not_asked_for(small_model: UrgencyModel) -> None:
    reading = small_model.predict("help").reading(((("critical",), 0.0),))
    with pytest.raises(KeyError, match="low"):
        reading.reasons(["low"])
