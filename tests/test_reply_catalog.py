"""The reply catalog: providers recognised from MX hosts, replies classified, unknown texts seen."""

from __future__ import annotations

from pathlib import Path

import pytest

from mailpipe.data import shipped
from mailpipe.outbound.classify import CatalogError, load

CATALOG = load(shipped("monitors") / "replies.toml")


@pytest.mark.parametrize(("mx", "domain", "provider"), [
    ("gmail-smtp-in.l.google.com", "", "google"),
    ("aspmx.l.google.com.", "example.com", "google"),
    ("mta7.am0.yahoodns.net", "", "yahoo"),
    ("example-com.mail.protection.outlook.com", "", "microsoft"),
    ("mx.mail.yahoo.co.jp", "", "yahoo_japan"),
    ("mx.example.org", "", "other"),
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
