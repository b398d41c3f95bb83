"""Provider requirement profiles: loading, evaluation over checks, and the traffic facts."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from mailpipe.config import Seed
from mailpipe.data import shipped
from mailpipe.message import parse
from mailpipe.monitors import profiles
from mailpipe.monitors.probes import probe_message, provider_verdicts
from mailpipe.monitors.traffic import Traffic, inspect
from tests.test_lifecycle import metrics

SHIPPED = profiles.load(shipped("monitors") / "providers")
GMAIL = next(p for p in SHIPPED if p.key == "gmail")
GOOD = {"spf.record": True, "spf.syntax": True, "spf.lookups": True, "spf.authorized.192.0.2.1": True,
        "dkim.configured": True, "dkim.s1": True, "dmarc.record": True, "dmarc.policy": True,
        "dmarc.alignment": True, "ptr.192.0.2.1": True, "mx": True, "traffic.tls": True, "traffic.format": True}


def outcome(checks: dict[str, bool], requirement: str, bulk: bool = False) -> bool | None:
    found = {o.requirement.id: o for o in profiles.evaluate(GMAIL, checks, bulk=bulk)}
    return found[requirement].ok if requirement in found else "not applicable"


def test_the_shipped_profiles_cover_the_large_providers_and_japanese_carriers_with_dates_and_sources() -> None:
    assert {(p.key, p.provider) for p in SHIPPED} == {
        ("gmail", "google"), ("yahoo", "yahoo"), ("outlook", "microsoft"), ("icloud", "apple"),
        ("yahoo_japan", "yahoo_japan"), ("docomo", "docomo"), ("au", "au"), ("softbank", "softbank")}
    assert all(r.since and r.source.startswith("https://") for p in SHIPPED for r in p.requirements)


def requirement(key: str, requirement_id: str) -> profiles.Requirement:
    profile = next(p for p in SHIPPED if p.key == key)
    return next(r for r in profile.requirements if r.id == requirement_id)


def test_the_profiles_carry_the_rules_added_since_2024() -> None:
    assert requirement("gmail", "spam_rate").unknown_without and requirement("yahoo", "spam_rate").unknown_without
    assert requirement("yahoo", "soa").all_of == ("soa",)
    assert requirement("outlook", "spf_lookups").all_of == ("spf.lookups",)
    assert requirement("outlook", "reverse_dns").all_of == ("ptr",)
    assert requirement("au", "spf_envelope").all_of == ("spf.authorized", "spf.helo")
    assert requirement("softbank", "dmarc_pass").enforced("2024-05-01").action == "rejection"
    assert requirement("docomo", "dmarc_warning").enforced("2025-02-12").action == "warning"
    assert requirement("yahoo_japan", "spf_dkim_or_dmarc").since == "2024-12-11"
    assert requirement("icloud", "spf_and_dkim").scope == "bulk"


def test_enforcement_tells_which_stage_is_in_force_on_a_date() -> None:
    ptr = requirement("gmail", "ptr")
    assert ptr.enforced("2024-01-31") is None
    assert ptr.enforced("2025-10-31").action == "deferral"
    assert ptr.enforced("2025-11-01").action == "rejection"


def test_a_requirement_on_data_mailpipe_cannot_see_is_unknown_never_passed() -> None:
    found = {o.requirement.id: o for o in profiles.evaluate(GMAIL, GOOD, bulk=True)}
    assert found["spam_rate"].ok is None and "Postmaster Tools" in found["spam_rate"].detail
    assert found["visible_unsubscribe_link"].ok is None


def test_a_requirement_holds_when_its_checks_pass() -> None:
    assert outcome(GOOD, "spf_or_dkim") is True and outcome(GOOD, "tls") is True


def test_any_of_holds_with_one_passing_group() -> None:
    assert outcome({**GOOD, "dkim.s1": False}, "spf_or_dkim") is True
    assert outcome({**GOOD, "dkim.s1": False, "spf.authorized.192.0.2.1": False}, "spf_or_dkim") is False


def test_a_prefix_with_no_checks_is_unknown_not_failed() -> None:
    without_ptr = {k: v for k, v in GOOD.items() if not k.startswith("ptr")}
    assert outcome(without_ptr, "ptr") is None


def test_bulk_requirements_apply_only_to_bulk_senders() -> None:
    assert outcome(GOOD, "one_click_unsubscribe") == "not applicable"
    assert outcome({**GOOD, "traffic.unsubscribe": False}, "one_click_unsubscribe", bulk=True) is False


def test_a_broken_profile_names_file_requirement_and_key(tmp_path: Path) -> None:
    (tmp_path / "new.toml").write_text('provider = "google"\n[[requirements]]\nid = "x"\ndescription = "d"\n'
                                       'since = "2026-12-01"\nsource = "https://x"\nscope = "sometimes"\n')
    with pytest.raises(profiles.ProfileError) as error:
        profiles.load(tmp_path)
    assert error.value.problems == [f"{tmp_path / 'new.toml'}: requirement x: scope: must be all or bulk",
                                    f"{tmp_path / 'new.toml'}: requirement x: needs all or any (or unknown_without)"]


def test_a_broken_enforcement_names_the_stage_and_key(tmp_path: Path) -> None:
    (tmp_path / "new.toml").write_text('provider = "google"\n[[requirements]]\nid = "x"\ndescription = "d"\n'
                                       'since = "2026-12-01"\nsource = "https://x"\nall = ["ptr"]\nenforcement = ['
                                       '{ from = "2026-12-01", action = "bounce" }, '
                                       '{ from = "soon", action = "junk" }, { from = "2025-01", action = "junk" }]\n')
    with pytest.raises(profiles.ProfileError) as error:
        profiles.load(tmp_path)
    where = f"{tmp_path / 'new.toml'}: requirement x"
    assert error.value.problems == [
        f"{where}: enforcement[0]: action: must be one of none, warning, junk, deferral, rejection, no_mitigation",
        f"{where}: enforcement[1]: from: must be a date, YYYY-MM-DD or YYYY-MM",
        f"{where}: enforcement: stages must be in date order"]


def test_headers_are_judged_for_format_and_one_click_unsubscribe() -> None:
    good = b"From: a@x\r\nDate: d\r\nMessage-ID: <1@x>\r\n\r\nbody"
    assert inspect(good) == (True, False, False)
    assert inspect(b"From: a@x\r\nFrom: b@x\r\nDate: d\r\nMessage-ID: <1@x>\r\n\r\n")[0] is False
    bulk = (b"From: a@x\r\nDate: d\r\nMessage-ID: <1@x>\r\nList-Id: <news.x>\r\nList-Unsubscribe: <https://x/u>\r\n"
            b"List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n\r\n")
    assert inspect(bulk) == (True, True, True)


def test_traffic_facts_cover_the_recent_window_only() -> None:
    now = [1000.0]
    traffic = Traffic(window=60, clock=lambda: now[0])
    assert traffic.facts("google") == {}
    traffic.observe("google", False, b"From: a@x\r\nDate: d\r\nMessage-ID: <1@x>\r\n\r\n")
    assert traffic.facts("google") == {"traffic.tls": False, "traffic.format": True}
    now[0] += 61
    assert traffic.facts("google") == {}


def test_the_daemon_exports_checks_and_requirements_and_a_reloaded_profile_counts_at_once(make_daemon,
                                                                                          tmp_path: Path) -> None:
    directory = tmp_path / "providers"
    directory.mkdir()
    (directory / "gmail.toml").write_text((shipped("monitors") / "providers" / "gmail.toml").read_text())
    daemon = make_daemon({"monitors": {"domains": ["misconfigured.test"], "providers_directory": str(directory)}})
    deadline = time.monotonic() + 20
    while ("mailpipe_dns_check_ok", (("check", "spf.lookups"), ("domain", "misconfigured.test"))) not in (
            found := metrics(daemon)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found[("mailpipe_dns_check_ok", (("check", "spf.lookups"), ("domain", "misconfigured.test")))] == 0
    # the EHLO name mx.example.test, which null-sender acknowledgements are SPF-checked against
    assert found[("mailpipe_dns_check_ok", (("check", "spf.helo.record"), ("domain", "misconfigured.test")))] == 1
    assert found[("mailpipe_provider_requirement_ok", (("provider", "google"), ("requirement", "spf_record")))] == 0
    with (directory / "gmail.toml").open("a") as profile:  # Google announces a new rule
        profile.write('\n[[requirements]]\nid = "dmarc_everyone"\ndescription = "All senders publish DMARC"\n'
                      'scope = "all"\nsince = "2026-12-01"\nsource = "https://support.google.com/a/answer/81126"\n'
                      'all = ["dmarc.record"]\n')
    reloaded = time.monotonic()
    daemon.signal(signal.SIGHUP)
    key = ("mailpipe_provider_requirement_ok", (("provider", "google"), ("requirement", "dmarc_everyone")))
    while key not in (found := metrics(daemon)) and time.monotonic() < reloaded + 20:
        time.sleep(0.1)
    assert found[key] == 0 and time.monotonic() - reloaded < 10
    unknown = ("mailpipe_provider_requirement_unknown", (("provider", "google"), ("requirement", "spam_rate")))
    assert found[unknown] == 1
    assert ("mailpipe_provider_requirement_ok", unknown[1]) not in found


def test_the_providers_own_verdicts_are_read_from_its_authentication_results() -> None:
    header = (" mx.google.com;\r\n dkim=pass header.i=@example.test;\r\n spf=softfail smtp.mailfrom=a@example.test;"
              "\r\n dmarc=pass (p=REJECT) header.from=example.test")
    assert provider_verdicts([header]) == {"dkim": "pass", "spf": "softfail", "dmarc": "pass"}


def test_a_probe_is_an_ordinary_message_with_its_token_in_the_subject() -> None:
    raw = probe_message("mp-1234", Seed("gmail", "seed@gmail.test", "imap", "u", "p"), "support@example.test", "mx",
                        1_790_000_000)
    parsed = parse(raw)
    assert parsed.subject == "Delivery check mp-1234" and parsed.message_id == "probe-mp-1234@mx"
    assert b"X-Mailpipe" not in raw


def test_the_dns_monitors_flag_an_ehlo_name_without_spf_for_null_sender_mail(make_daemon) -> None:
    daemon = make_daemon({"monitors": {"domains": ["example.test"]}, "outbound": {"hostname": "mx.customer.test"}})
    key = ("mailpipe_dns_check_ok", (("check", "spf.helo.record"), ("domain", "example.test")))
    deadline = time.monotonic() + 20
    while key not in (found := metrics(daemon)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert found[key] == 0
