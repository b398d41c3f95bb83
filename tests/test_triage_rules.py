"""Urgency rules: loading and refusing, matching Japanese and English, composites, overrides,
the shipped examples, and the default ruleset's quality on labelled mail."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from mailpipe.config import TriageConfig
from mailpipe.data import shipped
from mailpipe.message import parse
from mailpipe.store import CustomerRecord
from mailpipe.store.sqlite import SQLiteStore
from mailpipe.triage import corpus, evaluation, examples, rules
from mailpipe.triage.context import Context, History, dmarc_verdict
from mailpipe.triage.hours import within_business_hours
from mailpipe.triage.rules import RulesError
from mailpipe.triage.score import evaluate
from tests.conftest import TRAINING_SECONDS
from tests.triage_corpus import ASIDE, FIXTURES, LABELLED, build, score_all

NOW = datetime(2026, 11, 24, 5, 0, tzinfo=UTC)
LEVELS = "[levels]\ncritical = 12\nhigh = 5\nnormal = 0\n"


def ruleset(tmp_path: Path, text: str, overrides: str | None = None) -> rules.RuleSet:
    base = tmp_path / "rules"
    base.mkdir(exist_ok=True)
    (base / "r.toml").write_text(LEVELS + text, "utf-8")
    layer = None
    if overrides is not None:
        layer = tmp_path / "rules.d"
        layer.mkdir(exist_ok=True)
        (layer / "site.toml").write_text(overrides, "utf-8")
    return rules.load(base, layer)


def context(subject: str = "", body: str = "", **kwargs) -> Context:
    raw = (f"From: c@example.org\r\nSubject: {subject}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           f"{body}\r\n").encode()
    return Context(parse(raw), kwargs.pop("now", NOW), **kwargs)


def fired(rules_: rules.RuleSet, ctx: Context) -> tuple[str, ...]:
    return evaluate(rules_, ctx).rule_names


def test_a_subject_regex_reads_the_folded_subject_and_not_the_body(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "AWAY"\ndescription = "d"\nscore = -8\n'
                          'subject_regex = ["^out of office:"]\n')
    assert fired(r, context(subject="Ｏｕｔ ｏｆ Ｏｆｆｉｃｅ： back Monday")) == ("AWAY",)
    assert fired(r, context(subject="Help", body="Out of office: our replies loop")) == ()


def test_japanese_keywords_match_without_word_boundaries(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "NOT_DELIVERED"\ndescription = "d"\nscore = 5\nany = ["届かない"]\n')
    assert fired(r, context(body="昨日からGmail宛てのメールが届かないのです")) == ("NOT_DELIVERED",)


def test_keywords_match_in_a_mail_forwarded_as_an_attachment(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "SERVICE_DOWN"\ndescription = "d"\nscore = 5\nany = ["is down"]\n')
    raw = (b"From: c@example.org\r\nSubject: Fwd: alert\r\nContent-Type: multipart/mixed; boundary=f\r\n\r\n"
           b"--f\r\nContent-Type: text/plain\r\n\r\nFYI\r\n--f\r\nContent-Type: message/rfc822\r\n\r\n"
           b"Subject: [DOWN]\r\nContent-Type: text/plain\r\n\r\nThe send API is down.\r\n--f--\r\n")
    assert fired(r, Context(parse(raw), NOW)) == ("SERVICE_DOWN",)


def test_full_width_and_half_width_forms_are_folded(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "CODE"\ndescription = "d"\nscore = 5\nany = ["TSS04", "エラー"]\n')
    assert fired(r, context(body="ＴＳＳ０４ が返ってきます")) == ("CODE",)
    assert fired(r, context(body="ｴﾗｰです")) == ("CODE",)


def test_english_keywords_match_whole_words_only(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "REFUND"\ndescription = "d"\nscore = 5\nany = ["refund"]\n')
    assert fired(r, context(body="Please REFUND me.")) == ("REFUND",)
    assert fired(r, context(body="Is the plan refundable?")) == ()


def test_an_english_keyword_negated_inside_an_identifier_does_not_fire(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "RESOLVED"\ndescription = "d"\nscore = -6\nany = ["resolved"]\n')
    assert fired(r, context(body="The console shows net::ERR_NAME_NOT_RESOLVED for the form's script.")) == ()
    assert fired(r, context(body="Ticket status_resolved, thanks.")) == ("RESOLVED",)


def test_an_english_keyword_fires_as_a_word_after_appearing_inside_words(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "REFUND"\ndescription = "d"\nscore = 5\nany = ["refund"]\n')
    verdict = evaluate(r, context(body="Is it refundable? ERR_NOT_REFUND says no. Please refund me."))
    assert [(hit.name, hit.matched) for hit in verdict.hits] == [("REFUND", "refund")]


def test_a_closing_padded_with_half_a_million_spaces_is_scored_in_one_pass() -> None:
    """Hostile input: THANKS's test for a closing line backtracked over the padding (an hour a mail)."""
    verdict = evaluate(rules.load(shipped("rules")), context(body="Many thanks" + " " * 500_000 + "Beryl"))
    assert "THANKS" in verdict.rule_names


def test_keywords_in_quoted_history_do_not_fire(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "REFUND"\ndescription = "d"\nscore = 5\nany = ["refund"]\n')
    assert fired(r, context(body="Thanks!\n\nOn Mon, 1 Jan 2026, Support <s@x> wrote:\n> refund sent")) == ()


def test_a_replys_subject_is_not_matched_by_any_keywords(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "LOGIN"\ndescription = "d"\nscore = 5\nany = ["log in"]\n')
    assert fired(r, context(subject="Re: Can't log in", body="Works now, thanks")) == ()
    assert fired(r, context(subject="Can't log in", body="Help")) == ("LOGIN",)


def test_all_conditions_of_a_rule_must_hold(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "VIP_DOWN"\ndescription = "d"\nscore = 5\nany = ["down"]\n'
                          'customer = { vip = true }\n')
    vip = CustomerRecord(1, "c@example.org", vip=True)
    assert fired(r, context(body="site is down", customer=vip)) == ("VIP_DOWN",)
    assert fired(r, context(body="site is down")) == ()


def test_a_vip_address_failing_dmarc_is_not_treated_as_vip(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "VIP"\ndescription = "d"\nscore = 3\ncustomer = { vip = true }\n')
    vip = CustomerRecord(1, "c@example.org", vip=True)
    assert fired(r, context(customer=vip, dmarc="pass")) == ("VIP",)
    assert fired(r, context(customer=vip, dmarc="fail")) == ()


def test_headers_history_and_time_conditions(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "AUTO"\ndescription = "d"\nscore = -10\n'
                          'headers = { Auto-Submitted = "^auto-" }\n'
                          '[[rule]]\nname = "AGAIN"\ndescription = "d"\nscore = 3\n'
                          'repeat = { within_hours = 24, at_least = 2 }\n'
                          '[[rule]]\nname = "OLD"\ndescription = "d"\nscore = 2\nopen_case_hours = 48\n'
                          '[[rule]]\nname = "NIGHT"\ndescription = "d"\nscore = 1\noutside_business_hours = true\n')
    auto = Context(parse(b"Auto-Submitted: auto-replied\r\nSubject: x\r\n\r\nx"), NOW)
    assert fired(r, auto) == ("AUTO",)
    history = History(contacts=(NOW - timedelta(hours=2), NOW - timedelta(hours=5), NOW - timedelta(days=3)),
                      open_case_since=NOW - timedelta(hours=50))
    assert fired(r, context(history=history)) == ("AGAIN", "OLD")
    assert fired(r, context(business_hours=False)) == ("NIGHT",)


def test_composites_combine_rules_with_and_or_not(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "DOWN"\ndescription = "d"\nscore = 6\nany = ["down"]\n'
                          '[[rule]]\nname = "MANY"\ndescription = "d"\nscore = 4\nany = ["everyone"]\n'
                          '[[rule]]\nname = "THANKS"\ndescription = "d"\nscore = -3\nany = ["thanks"]\n'
                          '[[rule]]\nname = "OUTAGE"\ndescription = "d"\nscore = 4\nescalate = "dev"\n'
                          'expression = "DOWN & MANY & !THANKS"\n')
    verdict = evaluate(r, context(body="down for everyone"))
    assert verdict.rule_names == ("DOWN", "MANY", "OUTAGE")
    assert (verdict.score, verdict.level, verdict.escalate) == (14, "critical", "dev")
    assert "OUTAGE" not in fired(r, context(body="down for everyone, now fixed, thanks"))


def test_a_rule_that_fires_cancels_the_points_and_escalation_of_the_rules_it_names(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "BREACH"\ndescription = "d"\nscore = 6\nescalate = "dev"\n'
                          'any = ["hacked"]\n[[rule]]\nname = "HOW_TO"\ndescription = "d"\nscore = 0\n'
                          'any = ["could we"]\ncancels = ["BREACH"]\n')
    alone = evaluate(r, context(body="we were hacked"))
    assert (alone.score, alone.escalate) == (6, "dev")
    verdict = evaluate(r, context(body="could we get hacked through the API?"))
    assert (verdict.score, verdict.level, verdict.escalate) == (0, "normal", None)
    assert [(hit.name, hit.score, hit.matched) for hit in verdict.hits] == [
        ("BREACH", 0, "hacked (cancelled by HOW_TO)"), ("HOW_TO", 0, "could we")]


def test_to_a_composite_a_cancelled_rule_has_not_fired(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "DOWN"\ndescription = "d"\nscore = 3\nany = ["down"]\n'
                          '[[rule]]\nname = "MANY"\ndescription = "d"\nscore = 4\nany = ["everyone"]\n'
                          '[[rule]]\nname = "HOW_TO"\ndescription = "d"\nscore = 0\nany = ["what if"]\n'
                          'cancels = ["DOWN"]\n'
                          '[[rule]]\nname = "OUTAGE"\ndescription = "d"\nscore = 4\nexpression = "DOWN & MANY"\n'
                          '[[rule]]\nname = "CALM"\ndescription = "d"\nscore = -2\nexpression = "MANY & !DOWN"\n')
    assert fired(r, context(body="down for everyone")) == ("DOWN", "MANY", "OUTAGE")
    verdict = evaluate(r, context(body="what if it is down for everyone?"))
    assert verdict.rule_names == ("DOWN", "MANY", "HOW_TO", "CALM")
    assert verdict.score == 2


def test_a_rule_with_at_most_caps_the_level_and_keeps_the_points_and_escalation(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "DOWN"\ndescription = "d"\nscore = 8\nescalate = "tech"\nany = ["down"]\n'
                          '[[rule]]\nname = "EVERYONE"\ndescription = "d"\nscore = 6\nany = ["everyone"]\n'
                          '[[rule]]\nname = "ONE_SHOP"\ndescription = "d"\nscore = 0\nany = ["our shop"]\n'
                          'at_most = "high"\n')
    assert evaluate(r, context(body="down for everyone")).level == "critical"
    verdict = evaluate(r, context(body="our shop's checkout is down for everyone"))
    assert (verdict.score, verdict.level, verdict.escalate) == (14, "high", "tech")
    assert evaluate(r, context(body="our shop has a question")).level == "normal"


def test_a_cancelled_rule_cancels_nothing(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "BREACH"\ndescription = "d"\nscore = 6\nany = ["hacked"]\n'
                          '[[rule]]\nname = "HOW_TO"\ndescription = "d"\nscore = 0\nany = ["could we"]\n'
                          'cancels = ["BREACH"]\n'
                          '[[rule]]\nname = "REAL"\ndescription = "d"\nscore = 0\nany = ["it happened"]\n'
                          'cancels = ["HOW_TO"]\n')
    verdict = evaluate(r, context(body="could we get hacked? it happened"))
    assert verdict.score == 6
    assert [hit.score for hit in verdict.hits] == [6, 0, 0]


def test_cancelling_a_rule_the_operator_switched_off_is_accepted(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "BREACH"\ndescription = "d"\nscore = 6\nany = ["hacked"]\n'
                          '[[rule]]\nname = "HOW_TO"\ndescription = "d"\nscore = 0\nany = ["could we"]\n'
                          'cancels = ["BREACH"]\n', overrides='[[rule]]\nname = "BREACH"\nenabled = false\n')
    assert fired(r, context(body="could we get hacked?")) == ("HOW_TO",)


@pytest.mark.parametrize(("text", "expected"), [
    ('[[rule]]\nname = "lower"\ndescription = "d"\nscore = 1\nany = ["x"]\n', "must be UPPER_SNAKE_CASE"),
    ('[[rule]]\nname = "A"\ndescription = "d"\nscore = "high"\nany = ["x"]\n', "rule A: score 'high'"),
    ('[[rule]]\nname = "A"\ndescription = "d"\nscore = 1\n', "rule A: has no condition"),
    ('[[rule]]\nname = "A"\ndescription = "d"\nscore = 1\nregex = ["("]\n', "rule A: regex:"),
    ('[[rule]]\nname = "A"\ndescription = "d"\nscore = 1\nany = ["x"]\nbogus = 1\n', "rule A: unknown key 'bogus'"),
    ('[[rule]]\nname = "A"\ndescription = "d"\nscore = 1\nexpression = "B & C"\n', "uses unknown (or disabled) rule B"),
    ('[[rule]]\nname = "A"\ndescription = "d"\nscore = 1\nexpression = "B"\n'
     '[[rule]]\nname = "B"\ndescription = "d"\nscore = 1\nexpression = "A"\n', "form a cycle"),
    ('[[rule]]\nname = "A"\ndescription = "d"\nscore = 1\nany = ["x"]\n'
     '[[rule]]\nname = "A"\ndescription = "d"\nscore = 1\nany = ["y"]\n', "rule A: defined twice"),
    ('[[rule]]\nname = "A"\ndescription = "d"\nscore = 1\nany = ["x"]\nescalate = "ceo"\n', "escalate 'ceo'"),
    ('[[rule]]\nname = "A"\ndescription = "d"\nscore = 1\nrepeat = { within_hours = 24, at_least = 500 }\n',
     "at_least must be 1 to 100"),
    ('[[rule]\nname = "A"\n', "TOML syntax"),
    ('[[rule]]\nname = "A"\ndescription = "d"\nscore = 0\nany = ["x"]\ncancels = ["B"]\n',
     "rule A: cancels unknown rule B"),
    ('[[rule]]\nname = "A"\ndescription = "d"\nscore = 0\nany = ["x"]\ncancels = ["A"]\n', "rule A: cancels itself"),
    ('[[rule]]\nname = "A"\ndescription = "d"\nscore = 0\nany = ["x"]\ncancels = "B"\n', "rule A: cancels 'B' must be"),
    ('[[rule]]\nname = "A"\ndescription = "d"\nscore = 0\nany = ["x"]\ncancels = ["B"]\n'
     '[[rule]]\nname = "B"\ndescription = "d"\nscore = 0\nany = ["y"]\ncancels = ["A"]\n',
     "cancel each other in a ring: A, B"),
    ('[[rule]]\nname = "A"\ndescription = "d"\nscore = 0\nany = ["x"]\n'
     '[[rule]]\nname = "B"\ndescription = "d"\nscore = 0\nexpression = "A"\ncancels = ["A"]\n',
     "rule B: a composite cannot cancel"),
    ('[[rule]]\nname = "A"\ndescription = "d"\nscore = 0\nany = ["x"]\nat_most = "medium"\n',
     "rule A: at_most 'medium' must be one of critical, high, normal, low"),
])
def test_a_broken_rule_file_is_refused_naming_file_rule_and_reason(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(RulesError) as error:
        ruleset(tmp_path, text)
    where = str(tmp_path / "rules" / "r.toml")
    assert any(expected in problem and where in problem for problem in error.value.problems), error.value.problems


def test_overrides_replace_a_rule_key_by_key_and_can_disable_one(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "A"\ndescription = "d"\nscore = 1\nany = ["alpha"]\n'
                          '[[rule]]\nname = "B"\ndescription = "d"\nscore = 1\nany = ["beta"]\n',
                overrides='[[rule]]\nname = "A"\nscore = 7\n[[rule]]\nname = "B"\nenabled = false\n'
                          '[[rule]]\nname = "C"\ndescription = "site rule"\nscore = 2\nany = ["gamma"]\n'
                          '[levels]\nhigh = 6\n')
    verdict = evaluate(r, context(body="alpha beta gamma"))
    assert verdict.rule_names == ("A", "C")
    assert verdict.score == 9
    assert r.levels["high"] == 6


def test_thresholds_map_totals_to_levels(tmp_path: Path) -> None:
    r = ruleset(tmp_path, '[[rule]]\nname = "A"\ndescription = "d"\nscore = 1\nany = ["x"]\n')
    assert [r.level(s) for s in (12, 11.9, 5, 4.5, 0, -0.5)] == ["critical", "high", "high", "normal", "normal", "low"]


def test_every_shipped_rule_example_passes(shipped_model) -> None:
    checked, failures = examples.run(rules.load(shipped("rules")), shipped_model)
    assert checked >= 60
    assert failures == []


def test_business_hours_follow_the_desks_time_zone_and_days() -> None:
    settings = TriageConfig("", "", "Asia/Tokyo", "09:00-18:00", ("mon", "tue", "wed", "thu", "fri"), True)
    assert within_business_hours(datetime(2026, 11, 24, 1, 0, tzinfo=UTC), settings)  # Tue 10:00 JST
    assert not within_business_hours(datetime(2026, 11, 24, 10, 0, tzinfo=UTC), settings)  # 19:00
    assert not within_business_hours(datetime(2026, 11, 22, 1, 0, tzinfo=UTC), settings)  # Sunday


def test_the_labelled_set_has_120_messages_in_every_level_language_and_encoding() -> None:
    scored = score_all(LABELLED)
    assert len(scored) >= 120
    assert {entry["encoding"] for entry, _, _ in scored} >= {"iso-2022-jp", "shift_jis", "euc-jp", "utf-8", "html"}
    assert {level for _, level, _ in scored} == set(rules.LEVELS)
    built = parse(build(scored[0][0]))
    assert built.language == "ja"


@pytest.mark.parametrize("header", ["auto-replied", 'Auto-Replied; owner-email="kim@example.org"', "auto-generated"])
def test_an_out_of_office_quoting_an_outage_stays_low(shipped_model, header: str) -> None:
    """Gmail writes auto-replied, Exchange auto-generated with "Automatic reply:": either way the
    emergency in the subject is the thread the machine answers."""
    raw = build({"encoding": "us-ascii", "sender": "akiko@agency.example.com", "headers": {"Auto-Submitted": header},
                 "subject": "Automatic reply: Re: All five of our client accounts failing since 9am (421 4.7.0)",
                 "body": "I am on leave until September. For anything urgent concerning our clients, call Sven."})
    verdict = evaluate(rules.load(shipped("rules")), Context(parse(raw), NOW, model=shipped_model))
    assert verdict.level == "low", verdict.summary()


def test_a_voicemail_bridge_is_judged_by_what_it_reports(shipped_model) -> None:
    raw = build({"encoding": "utf-8", "sender": "voicemail@pbx.example.jp",
                 "headers": {"Auto-Submitted": "auto-generated"}, "subject": "留守番電話のメッセージ 03-0000-4417",
                 "body": "お客様からの留守電です。全会員へのメールが今朝から一通も届いていない、"
                         "至急折り返しを、とのことです。"})
    verdict = evaluate(rules.load(shipped("rules")), Context(parse(raw), NOW, model=shipped_model))
    assert verdict.level in ("critical", "high"), verdict.summary()


def test_rules_with_the_model_put_held_aside_mail_at_its_level(shipped_model) -> None:
    """A floor against regressions, not the benchmark (``mailpipe rules eval`` prints that): the
    held-aside fifth was never trained or tuned on."""
    scores = _with_the_model(ASIDE, shipped_model)
    assert scores["messages"] >= 400
    assert scores["critical_at_high_or_above"] >= 0.9 * scores["critical"]
    assert scores["urgent_recall"] >= 0.9 and scores["urgent_precision"] >= 0.8
    assert scores["low_promoted"] <= 6


# The seventh and ninth rounds keep a miss or two each: a leak reported under a thank-you, and
# since the corpus slices on whose emergency it is and on machine alerts (zz28, zz29) the seventh's
# forwarded blocklist alert (low and critical both 0.40, low a hair ahead), and its looping
# automation asked about as "where do I see send counts?", on the edge between critical and normal
# (the paragraph rule, MODEL_CRITICAL_PASSAGE, put their admin none of us created and a mis-send to
# a whole school back at high); the thirteenth and fourteenth promote a press release, a
# recipient's メール止めて and a vendor's "payment failed, we will retry" notice and read an invoice
# reissue and one bouncing address high; the sixteenth (an English desk's ordinary day) promotes a
# forwarded outage alert under "FYI, not us" (high) and since the paragraph rule reads a volunteer's
# list upload stopped at one row high, and the seventeenth and eighteenth read routine billing,
# settings and worried campaign-day mail high; the tenth, since the billing slice zz38, reads a
# footer question that tells in passing of a production key in a public repository normal (4.2
# points of 5). Their floors are where they stand.
@pytest.mark.parametrize(("name", "count", "critical_floor", "recall_floor", "precision_floor", "low_ceiling"),
                         [("apart", 300, 0.95, 0.95, 0.9, 2), ("natural", 120, 0.95, 0.95, 0.9, 2),
                          ("blind", 200, 0.95, 0.95, 0.9, 2), ("blind2", 160, 0.95, 0.95, 0.9, 2),
                          ("blind3", 200, 0.95, 0.95, 0.9, 2), ("blind4", 100, 0.95, 0.95, 0.9, 2),
                          ("blind5", 80, 0.95, 0.95, 0.9, 2), ("blind6", 100, 0.95, 0.95, 0.9, 2),
                          ("blind7", 100, 0.9, 0.92, 0.9, 2), ("blind8", 100, 0.95, 0.95, 0.9, 2),
                          ("blind9", 100, 0.95, 0.95, 0.9, 2), ("blind10", 80, 0.9, 0.92, 0.9, 2),
                          ("blind11", 80, 0.95, 0.92, 0.9, 2), ("blind12", 80, 0.95, 0.95, 0.9, 2),
                          ("blind13", 80, 0.95, 0.95, 0.85, 2), ("blind14", 64, 0.95, 0.95, 0.75, 1),
                          ("blind15", 60, 0.95, 0.93, 0.9, 2), ("blind16", 60, 0.95, 0.95, 0.8, 1),
                          ("blind17", 72, 0.95, 0.95, 0.8, 2), ("blind18", 72, 0.95, 0.93, 0.75, 2),
                          ("blind19", 80, 0.95, 0.95, 0.85, 1), ("blind20", 72, 0.95, 0.95, 0.85, 1),
                          ("blind21", 80, 0.95, 0.95, 0.9, 1), ("blind22", 68, 0.95, 0.95, 0.9, 1)])
def test_rules_with_the_model_put_mail_written_apart_from_the_corpus_at_its_level(
        shipped_model, name: str, count: int, critical_floor: float, recall_floor: float,
        precision_floor: float, low_ceiling: int) -> None:
    """The same floor on messages by writers who never saw the corpus, the rules or the code (each
    file's header says by whom and how)."""
    scores = _with_the_model(FIXTURES / f"{name}.toml", shipped_model)
    assert scores["messages"] == count
    assert scores["critical_at_high_or_above"] >= critical_floor * scores["critical"]
    assert scores["urgent_recall"] >= recall_floor and scores["urgent_precision"] >= precision_floor
    assert scores["low_promoted"] <= low_ceiling


def _with_the_model(labelled: Path, model) -> dict:
    """``mailpipe rules eval``'s "both" figures for a labelled file, judged by ``model``."""
    judged = corpus.entries([labelled])
    return evaluation.judge(rules.load(shipped("rules")), evaluation.labelled(judged), [model] * len(judged),
                            NOW)["both"].summary()


def test_score_cli_prints_one_json_object_per_message(tmp_path: Path, training_corpus_keys: str) -> None:
    first, second = tmp_path / "a.eml", tmp_path / "b.eml"
    first.write_bytes("Subject: 至急: 全員ログインできません\r\n\r\n全ユーザーがログインできません。".encode())
    second.write_bytes(b"Subject: thanks\r\n\r\nThanks for your help, it works now.")
    config = tmp_path / "mailpipe.toml"
    config.write_text("[triage]\n" + training_corpus_keys)
    result = subprocess.run([sys.executable, "-m", "mailpipe", "score", "--json", "--config", str(config),
                             str(first), str(second)], capture_output=True, text=True, timeout=TRAINING_SECONDS)
    assert result.returncode == 0, result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["file"] for line in lines] == [str(first), str(second)]
    assert lines[0]["level"] == "critical" and lines[1]["level"] == "low"
    assert {"name": "LOGIN_BLOCKED", "score": 2.5} in [{k: r[k] for k in ("name", "score")} for r in lines[0]["rules"]]


def test_score_cli_explains_like_rspamc_and_reads_stdin() -> None:
    result = subprocess.run([sys.executable, "-m", "mailpipe", "score", "-"], input=b"Subject: refund\r\n\r\nrefund!",
                            capture_output=True, timeout=TRAINING_SECONDS)
    out = result.stdout.decode()
    assert "[Level]: high" in out
    assert "Symbol: CANCEL_REFUND (2.50)[refund]" in out
    assert 'Symbol: MODEL_URGENT (9.00)[p(critical+high)=' in out


def test_rules_test_cli_exits_1_naming_the_failing_example(tmp_path: Path, training_corpus_keys: str) -> None:
    directory = tmp_path / "rules"
    directory.mkdir()
    (directory / "r.toml").write_text(LEVELS + '[[rule]]\nname = "A"\ndescription = "d"\nscore = 1\nany = ["x"]\n'
                                      'examples = [{ body = "y", expect = true }]\n')
    config = tmp_path / "mailpipe.toml"
    config.write_text(f'[triage]\nrules_directory = "{directory}"\nrules_overrides = ""\n' + training_corpus_keys)
    result = subprocess.run([sys.executable, "-m", "mailpipe", "rules", "test", "--config", str(config)],
                            capture_output=True, text=True, timeout=TRAINING_SECONDS)
    assert result.returncode == 1
    assert "rule A: examples[0] should fire" in result.stderr


def test_score_cli_uses_the_stores_customer_context_when_present(tmp_path: Path, training_corpus_keys: str) -> None:
    state = tmp_path / "state"
    store = SQLiteStore(state / "store.sqlite")
    store.upsert_customer("vip@example.co.jp", vip=True, plan="enterprise")
    store.close()
    config = tmp_path / "mailpipe.toml"
    config.write_text(f'state_directory = "{state}"\n[triage]\n' + training_corpus_keys)
    message = tmp_path / "m.eml"
    message.write_bytes(b"From: <vip@example.co.jp>\r\nSubject: question\r\n\r\nHow do I add a user?")
    result = subprocess.run([sys.executable, "-m", "mailpipe", "score", "--json", "--config", str(config),
                             str(message)], capture_output=True, text=True, timeout=TRAINING_SECONDS)
    (line,) = map(json.loads, result.stdout.splitlines())
    assert line["customer_known"] is True
    assert {"VIP_CUSTOMER", "ENTERPRISE_PLAN"} <= {r["name"] for r in line["rules"]}


def test_only_our_own_authentication_results_count_for_dmarc() -> None:
    ours = parse(b"Authentication-Results: mx.example.test; dmarc=fail header.from=x\r\n\r\nx")
    forged = parse(b"Authentication-Results: evil.example; dmarc=fail\r\n\r\nx")
    assert dmarc_verdict(ours, "mx.example.test") == "fail"
    assert dmarc_verdict(forged, "mx.example.test") == "none"
