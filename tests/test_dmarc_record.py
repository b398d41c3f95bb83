"""DMARC records read by the RFC 7489 grammar: a table of records and verdicts, in the manner of
checkdmarc's own test cases (written here, not copied)."""

from __future__ import annotations

import time

import pytest

from mailpipe.dmarc_record import is_dmarc, parse_record

VALID = [
    ("v=DMARC1; p=none", {"p": "none"}),
    ("v=DMARC1; p=reject", {"p": "reject"}),
    ("v=DMARC1;p=quarantine", {"p": "quarantine"}),
    ("v = DMARC1; p=reject", {"p": "reject"}),
    ("v=DMARC1 ; p = reject ;", {"p": "reject"}),
    ("v=DMARC1;\tp=none;\tpct=50", {"p": "none", "pct": "50"}),
    ("v=DMARC1; p=REJECT", {"p": "reject"}),
    ("v=DMARC1; p=none; sp=reject", {"p": "none", "sp": "reject"}),
    ("v=DMARC1; p=none; pct=0", {"p": "none", "pct": "0"}),
    ("v=DMARC1; p=none; pct=100", {"p": "none", "pct": "100"}),
    ("v=DMARC1; p=reject; adkim=s; aspf=r", {"p": "reject", "adkim": "s", "aspf": "r"}),
    ("v=DMARC1; p=none; fo=1", {"p": "none", "fo": "1"}),
    ("v=DMARC1; p=none; fo=0:1:d:s", {"p": "none", "fo": "0:1:d:s"}),
    ("v=DMARC1; p=none; ri=86400", {"p": "none", "ri": "86400"}),
    ("v=DMARC1; p=none; rf=afrf", {"p": "none", "rf": "afrf"}),
    ("v=DMARC1; p=none; rua=mailto:reports@example.com", {"p": "none", "rua": "mailto:reports@example.com"}),
    ("v=DMARC1; p=none; rua=mailto:a@example.com,mailto:b@example.net!10m",
     {"p": "none", "rua": "mailto:a@example.com,mailto:b@example.net!10m"}),
    ("v=DMARC1; p=none; rua=mailto:a@example.com, mailto:b@example.net",
     {"p": "none", "rua": "mailto:a@example.com, mailto:b@example.net"}),
    ("v=DMARC1; p=none; ruf=mailto:Forensic@Example.com", {"p": "none", "ruf": "mailto:Forensic@Example.com"}),
    ("v=DMARC1; p=none; rua=https://reports.example.com/dmarc", {"p": "none", "rua": "https://reports.example.com/dmarc"}),
    ("v=DMARC1; p=reject; np=reject; psd=n", {"p": "reject", "np": "reject", "psd": "n"}),  # unknown to 7489: ignored
    ("v=DMARC1; p=none; foo=bar", {"p": "none", "foo": "bar"}),
]

INVALID = [
    ("v=DMARC1", "p: missing"),
    ("v=DMARC1; sp=reject", "p: missing"),
    ("v=DMARC1; p=block", "p=block: must be none, quarantine or reject"),
    ("v=DMARC1; p=", "p=: must be none, quarantine or reject"),
    ("v=DMARC1; p=none; sp=deny", "sp=deny: must be none, quarantine or reject"),
    ("v=DMARC1; p=none; pct=101", "pct=101: must be 0 to 100"),
    ("v=DMARC1; p=none; pct=-1", "pct=-1: must be 0 to 100"),
    ("v=DMARC1; p=none; pct=fifty", "pct=fifty: must be 0 to 100"),
    ("v=DMARC1; p=none; adkim=relaxed", "adkim=relaxed: must be r (relaxed) or s (strict)"),
    ("v=DMARC1; p=none; aspf=x", "aspf=x: must be r (relaxed) or s (strict)"),
    ("v=DMARC1; p=none; fo=2", "fo=2: must be 0, 1, d or s (colon-separated)"),
    ("v=DMARC1; p=none; fo=0,1", "fo=0,1: must be 0, 1, d or s (colon-separated)"),
    ("v=DMARC1; p=none; ri=daily", "ri=daily: must be a number of seconds"),
    ("v=DMARC1; p=none; ri=4294967296", "ri=4294967296: must be a number of seconds"),
    ("v=DMARC1; p=none; rua=reports@example.com", "rua=reports@example.com: reports@example.com is not a URI"),
    ("v=DMARC1; p=none; rua=mailto:a@example.com,b@example.com", "b@example.com is not a URI"),
    ("v=DMARC1; p=none; ruf=forensic@example.com", "ruf=forensic@example.com: forensic@example.com is not a URI"),
    ("v=DMARC1; p=none; rua=mailto:a@example.com!10x", "is not a URI"),
    ("v=DMARC1; p=none; p=reject", "p: given twice"),
    ("v=DMARC1; p=none; pct", "'pct' is not tag=value"),
]

NOT_DMARC = ["v=spf1 -all", "p=reject; v=DMARC1", "v=DMARC2; p=reject", "v=dmarc1; p=reject", "V=DMARC1; p=reject",
             " v=DMARC1; p=reject", "v=DMARC1p=reject", ""]


@pytest.mark.parametrize(("record", "tags"), VALID)
def test_a_valid_record_is_read_with_its_tags(record: str, tags: dict[str, str]) -> None:
    parsed = parse_record(record)
    assert (parsed.valid, parsed.errors, parsed.tags) == (True, (), tags)


@pytest.mark.parametrize(("record", "error"), INVALID)
def test_an_invalid_record_is_refused_with_the_reason(record: str, error: str) -> None:
    parsed = parse_record(record)
    assert not parsed.valid
    assert any(error in problem for problem in parsed.errors), parsed.errors


@pytest.mark.parametrize("text", NOT_DMARC)
def test_a_text_without_the_exact_version_tag_first_is_not_a_dmarc_record(text: str) -> None:
    assert not is_dmarc(text)
    assert parse_record(text).errors == ("does not start with v=DMARC1",)


def test_every_error_of_a_record_is_reported_at_once() -> None:
    assert len(parse_record("v=DMARC1; pct=200; adkim=x; rua=a@b").errors) == 4


def test_report_addresses_keep_their_case_and_keywords_are_lowercased() -> None:
    assert parse_record("v=DMARC1; P=Quarantine; RUA=mailto:DMARC@Example.com").tags == {
        "p": "quarantine", "rua": "mailto:DMARC@Example.com"}


def test_a_receiver_ignores_a_wrong_value_in_favour_of_the_default() -> None:
    assert parse_record("v=DMARC1; p=reject; adkim=x; pct=500").applied() == {"p": "reject"}


def test_a_receiver_treats_a_wrong_policy_with_a_usable_rua_as_p_none() -> None:
    assert parse_record("v=DMARC1; p=block; rua=mailto:r@example.com").applied() == {
        "p": "none", "rua": "mailto:r@example.com"}
    assert parse_record("v=DMARC1; p=block; rua=r@example.com").applied() is None


def test_a_long_run_of_blanks_in_a_record_is_read_in_one_pass() -> None:
    blanks = " " * 200_000  # read by backtracking, each blank would cost a pass over the rest
    started = time.monotonic()
    record = parse_record(f"v=DMARC1;{blanks}p=reject{blanks};{blanks}x=a{blanks}b{blanks}")
    assert record.tags["p"] == "reject" and record.tags["x"] == f"a{blanks}b"
    assert time.monotonic() - started < 10
