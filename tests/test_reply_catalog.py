"""The reply catalog: providers recognised from MX hosts, replies classified, unknown texts seen."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from mailpipe.data import shipped
from mailpipe.outbound.classify import CatalogError, load, split_reply
from mailpipe.providers import OTHER

CATALOG = load(shipped("monitors") / "replies.toml")
REAL = tomllib.loads((Path(__file__).parent / "fixtures" / "replies" / "real.toml").read_text("utf-8"))["text"]
ENTRIES = [(entry, example) for entry in CATALOG.entries for example in entry.examples]


@pytest.mark.parametrize(("mx", "domain", "provider"), [
    ("gmail-smtp-in.l.google.com", "", "google"),
    ("aspmx.l.google.com.", "example.com", "google"),
    ("mta7.am0.yahoodns.net", "", "yahoo"),
    ("example-com.mail.protection.outlook.com", "", "microsoft"),
    ("mx.mail.yahoo.co.jp", "", "yahoo_japan"),
    ("mx01.mail.icloud.com", "", "apple"),
    ("mfsmax.docomo.ne.jp", "", "docomo"),
    ("lsean.ezweb.ne.jp", "", "au"),
    ("msmx.au.com", "", "au"),
    ("mx.softbank.ne.jp", "", "softbank"),
    ("mx.biglobe.ne.jp", "", "biglobe"),
    ("mx.ocn.ne.jp", "", "ocn"),
    ("mx.so-net.ne.jp", "", "sonet"),
    ("smmx.nifty.com", "", "nifty"),
    ("mx.example.org", "", "other"),
    (None, "i.softbank.jp", "softbank"),
    (None, "gmail.com", "google"),
    (None, "hotmail.co.jp", "microsoft"),
])
def test_providers_are_recognised_by_mx_host_then_recipient_domain(mx, domain, provider) -> None:
    assert CATALOG.provider(mx, domain) == provider


@pytest.mark.parametrize(("provider", "code", "text", "klass"), [
    ("google", 550, "5.7.26 This mail has been blocked because the sender is unauthenticated.", "authentication"),
    ("google", 421, "4.7.28 Our system has detected an unusual rate of unsolicited mail", "reputation"),
    ("google", 550, "5.7.25 The IP address sending this message does not have a PTR record setup", "authentication"),
    ("google", 550, "5.1.1 The email account that you tried to reach does not exist.", "recipient"),
    ("yahoo", 421, "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to unexpected volume",
     "reputation"),
    ("yahoo", 553, "5.7.2 [TSS09] All messages from 192.0.2.1 will be permanently deferred", "reputation"),
    ("microsoft", 550, "5.7.515 Access denied, sending domain example.com does not meet the required "
                       "authentication level. Spf=none Dkim=fail DMARC=none", "authentication"),
    ("microsoft", 451, "4.7.650 The mail server [192.0.2.1] has been temporarily rate limited (S775)",
     "reputation"),
    ("google", 250, "2.0.0 OK 1700000000 a1-20020a.123 - gsmtp", "accepted"),
])
def test_documented_replies_get_their_class(provider, code, text, klass) -> None:
    assert CATALOG.classify(provider, code, text).klass == klass


def test_a_text_a_known_provider_never_sent_before_is_unknown() -> None:
    assert CATALOG.classify("google", 550, "5.7.99 A brand new rule").unknown


def test_other_providers_fall_back_to_the_enhanced_status_code() -> None:
    assert CATALOG.classify("other", 550, "5.7.1 Relaying denied").klass == "policy"
    assert CATALOG.classify("other", 452, "4.2.2 Mailbox full").klass == "recipient"
    assert CATALOG.classify("other", 554, "no enhanced code here").klass == "other"


def test_multi_line_replies_are_matched_as_one_text() -> None:
    text = "5.7.26 This mail has been blocked because the sender\n5.7.26 is unauthenticated."
    assert CATALOG.classify("google", 550, text).klass == "authentication"


def test_override_entries_are_tried_before_the_shipped_ones(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text(
        '[[replies]]\nprovider = "google"\npattern = "5\\\\.7\\\\.99"\nclass = "policy"\nmeaning = "new rule"\n')
    catalog = load(shipped("monitors") / "replies.toml", tmp_path)
    assert catalog.classify("google", 550, "5.7.99 A brand new rule").meaning == "new rule"


def test_a_broken_catalog_names_file_entry_and_reason(tmp_path: Path) -> None:
    entry = '[[replies]]\nprovider = "google"\npattern = "("\nclass = "{}"\nmeaning = "x"\n'
    (tmp_path / "bad.toml").write_text(entry.format("spam") + entry.format("policy"))
    with pytest.raises(CatalogError) as error:
        load(shipped("monitors") / "replies.toml", tmp_path)
    assert f"{tmp_path / 'bad.toml'}: replies[0]: class: 'spam' is not one of" in error.value.problems[0]
    assert f"{tmp_path / 'bad.toml'}: replies[1]: pattern:" in error.value.problems[1]


def test_every_entry_has_a_real_example_a_source_a_date_and_an_action() -> None:
    bare = [entry.pattern.pattern for entry in CATALOG.entries
            if not (entry.examples and entry.source and entry.since and entry.action)]
    assert bare == []


@pytest.mark.parametrize(("entry", "example"), ENTRIES, ids=[f"{e.provider}:{x[:40]}" for e, x in ENTRIES])
def test_every_example_is_classed_by_its_own_entry_not_hidden_by_another(entry, example) -> None:
    matched = CATALOG.classify(OTHER if entry.provider == "*" else entry.provider, *split_reply(example)).entry
    assert matched is entry, f"{example!r} is classed by {matched.pattern.pattern if matched else None!r}"


def test_every_real_text_comes_from_the_provider_its_mx_host_names() -> None:
    named = [(text["mx"], text["provider"]) for text in REAL
             if text["mx"] and "*" not in text["mx"] and " " not in text["mx"]]
    assert [(mx, CATALOG.provider(mx)) for mx, provider in named if CATALOG.provider(mx) != provider] == []


def test_at_least_95_percent_of_real_texts_are_classed_as_labelled_and_none_wrongly() -> None:
    results = [(text, CATALOG.classify(text["provider"], *split_reply(text["reply"]))) for text in REAL]
    wrong = [(text["reply"][:70], got.klass, text["class"]) for text, got in results
             if not got.unknown and got.klass != text["class"]]
    unknown = [text["reply"][:70] for text, got in results if got.unknown]
    assert wrong == []
    assert len(unknown) <= 0.05 * len(REAL), unknown


@pytest.mark.parametrize(("reply", "klass"), [
    # Every real Gmail PTR text also says "rate limited": the PTR entry must win.
    ("421 4.7.0 The IP address sending this message does not have a PTR record, or the corresponding forward DNS "
     "entry does not point to the sending IP. To protect our users from spam, email sent from your IP address has "
     "been temporarily rate limited.", "authentication"),
    # 4.7.28 names a DKIM or SPF domain whose *rate* is unusual: reputation, not authentication.
    ("421 4.7.28 Gmail has detected an unusual rate of unsolicited email originating from your DKIM domain "
     "example.com. To protect our users from spam, email sent from your domain has been temporarily rate limited.",
     "reputation"),
    # 5.7.40 is also SMTP AUTH's "unrecognized authentication type": a login error, not DMARC.
    ("504 5.7.40 Unrecognized authentication type.", "other"),
    ("550 5.7.1 Unauthenticated email from example.no is not accepted due to domain's DMARC policy.",
     "authentication"),
])
def test_gmail_texts_whose_words_mislead_get_the_class_they_mean(reply, klass) -> None:
    assert CATALOG.classify("google", *split_reply(reply)).klass == klass


def test_a_provider_without_entries_is_still_named_and_its_text_unknown() -> None:
    provider = CATALOG.provider("mx.softbank.ne.jp")
    assert (provider, CATALOG.classify(provider, 550, "5.7.1 A rule nobody documented").klass) == \
        ("softbank", "unknown")


def test_a_multi_line_reply_as_pasted_is_read_as_one_text() -> None:
    pasted = ("550-5.7.26 Your email has been blocked because the sender is unauthenticated.\n"
              "550-5.7.26 Gmail requires all senders to authenticate with either SPF or DKIM.\n"
              "550 5.7.26  https://support.google.com/mail/answer/81126 - gsmtp")
    assert split_reply(pasted) == (550, "5.7.26 Your email has been blocked because the sender is unauthenticated. "
                                        "Gmail requires all senders to authenticate with either SPF or DKIM. "
                                        "https://support.google.com/mail/answer/81126 - gsmtp")


def test_an_example_its_own_pattern_does_not_match_is_a_catalog_error(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text('[[replies]]\nprovider = "google"\npattern = "5\\\\.7\\\\.99"\n'
                                        'class = "policy"\nmeaning = "x"\nexamples = ["550 5.7.98 other"]\n')
    with pytest.raises(CatalogError) as error:
        load(shipped("monitors") / "replies.toml", tmp_path)
    assert "replies[0]: examples: the pattern does not match '550 5.7.98 other'" in error.value.problems[0]
