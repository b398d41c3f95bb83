"""`mailpipe doctor`: a sending domain's DNS authentication, checked against unbound serving the
test zones, with the record to publish for each failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dns_peer import DKIM_SELECTOR, dkim_private_key


def write_config(tmp_path: Path, hostname: str = "mx.example.test") -> Path:
    """A config that signs example.test and misconfigured.test with the key example.test
    publishes, and greets as ``hostname`` (the EHLO name null-sender mail is checked against)."""
    key = tmp_path / "sel.key"
    key.write_bytes(dkim_private_key())
    path = tmp_path / f"mailpipe-{hostname}.toml"
    tables = "".join(f'[[dkim]]\ndomain = "{domain}"\nselector = "{DKIM_SELECTOR}"\nkey_file = "{key}"\n'
                     for domain in ("example.test", "misconfigured.test"))
    path.write_text(f'[outbound]\nhostname = "{hostname}"\n{tables}')
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def doctor(config: Path, dns_server, domain: str, *extra: str) -> tuple[int, dict]:
    result = subprocess.run([sys.executable, "-m", "mailpipe", "doctor", domain, "--json", "--nameserver",
                             dns_server.address, "--config", str(config), *extra],
                            capture_output=True, text=True, timeout=60)
    return result.returncode, json.loads(result.stdout)


def checks(report: dict) -> dict[str, dict]:
    return {check["name"]: check for check in report["checks"]}


def test_a_well_configured_domain_passes_every_check(config, dns_server) -> None:
    code, report = doctor(config, dns_server, "example.test", "--ip", "127.0.0.1")
    assert (code, report["ok"], report["domain"]) == (0, True, "example.test")
    names = set(checks(report))
    assert {"spf.record", "spf.lookups", "spf.authorized.127.0.0.1", "spf.helo.record", "dkim.sel", "dmarc.record",
            "dmarc.syntax", "dmarc.rua", "dmarc.alignment", "ptr.127.0.0.1", "mx", "soa"} <= names
    assert all(name.split(".")[0] in ("spf", "dkim", "dmarc", "ptr", "mx", "soa") for name in names)


def test_too_many_spf_lookups_are_counted_recursively_and_fail(config, dns_server) -> None:
    code, report = doctor(config, dns_server, "misconfigured.test")
    lookups = checks(report)["spf.lookups"]
    assert code == 1 and not lookups["ok"]
    assert lookups["detail"].startswith("11 DNS-querying terms")
    assert "ip4:" in lookups["fix"]


def test_a_published_dkim_key_other_than_ours_fails_with_the_record_to_publish(config, dns_server) -> None:
    _, report = doctor(config, dns_server, "misconfigured.test")
    dkim = checks(report)["dkim.sel"]
    assert not dkim["ok"] and "not the key mailpipe signs with" in dkim["detail"]
    assert dkim["fix"].startswith('sel._domainkey.misconfigured.test. IN TXT "v=DKIM1; k=rsa; p=')


def test_missing_dmarc_and_a_null_mx_fail_with_their_fixes(config, dns_server) -> None:
    _, report = doctor(config, dns_server, "misconfigured.test")
    found = checks(report)
    assert not found["dmarc.record"]["ok"]
    assert found["dmarc.record"]["fix"].startswith('publish _dmarc.misconfigured.test. IN TXT "v=DMARC1; p=none;')
    assert not found["mx"]["ok"] and "null MX" in found["mx"]["detail"]


def test_two_spf_records_fail(config, dns_server) -> None:
    _, report = doctor(config, dns_server, "twospf.test")
    assert checks(report)["spf.record"]["detail"] == "2 SPF records (receivers permerror)"


def test_a_sending_ip_the_record_does_not_name_is_unauthorized_and_without_ptr(config, dns_server) -> None:
    _, report = doctor(config, dns_server, "example.test", "--ip", "192.0.2.7")
    found = checks(report)
    assert not found["spf.authorized.192.0.2.7"]["ok"]
    assert "add ip4:192.0.2.7" in found["spf.authorized.192.0.2.7"]["fix"]
    assert not found["ptr.192.0.2.7"]["ok"]


def test_provider_requirements_are_judged_and_unknown_ones_do_not_fail(config, dns_server) -> None:
    code, report = doctor(config, dns_server, "example.test", "--ip", "127.0.0.1", "--provider", "gmail")
    requirements = {r["id"]: r for r in report["requirements"]}
    assert code == 0
    assert requirements["spf_or_dkim"]["ok"] is True and requirements["ptr"]["ok"] is True
    assert requirements["tls"]["ok"] is None  # only the running daemon sees its own traffic
    assert requirements["spf_or_dkim"]["source"].startswith("https://support.google.com/")


def test_the_readable_report_names_each_fix(config, dns_server) -> None:
    result = subprocess.run([sys.executable, "-m", "mailpipe", "doctor", "misconfigured.test", "--nameserver",
                             dns_server.address, "--config", str(config)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "  FAIL  spf.lookups" in result.stdout and "fix: replace include:" in result.stdout


def test_the_ehlo_name_needs_spf_of_its_own_for_null_sender_mail(config, dns_server) -> None:
    _, report = doctor(config, dns_server, "example.test", "--ip", "127.0.0.1")
    found = checks(report)
    assert found["spf.helo.record"]["ok"] and found["spf.helo.authorized.127.0.0.1"]["ok"]


def test_an_ehlo_name_without_spf_fails_with_the_record_to_publish(tmp_path, dns_server) -> None:
    code, report = doctor(write_config(tmp_path, "mx.customer.test"), dns_server, "example.test", "--ip", "127.0.0.1")
    helo = checks(report)["spf.helo.record"]
    assert code == 1 and not helo["ok"] and "no SPF record for the EHLO name mx.customer.test" in helo["detail"]
    assert helo["fix"] == 'publish exactly one: mx.customer.test. IN TXT "v=spf1 ip4:127.0.0.1 -all"'
    assert "spf.helo.authorized.127.0.0.1" not in checks(report)


def test_an_ehlo_name_whose_spf_does_not_cover_the_sending_ip_fails(config, dns_server) -> None:
    _, report = doctor(config, dns_server, "example.test", "--ip", "192.0.2.7")
    authorized = checks(report)["spf.helo.authorized.192.0.2.7"]
    assert not authorized["ok"] and "add ip4:192.0.2.7" in authorized["fix"]


def test_a_dmarc_record_with_whitespace_around_the_equals_signs_is_valid(config, dns_server) -> None:
    _, report = doctor(config, dns_server, "spaced.test")
    found = checks(report)
    assert found["dmarc.record"]["ok"] and found["dmarc.syntax"]["ok"] and found["dmarc.policy"]["detail"] == "p=reject"


def test_a_rua_without_a_uri_scheme_is_refused(config, dns_server) -> None:
    code, report = doctor(config, dns_server, "noscheme.test")
    syntax = checks(report)["dmarc.syntax"]
    assert code == 1 and not syntax["ok"]
    assert "reports@noscheme.test is not a URI (e.g. mailto:reports@example.com)" in syntax["detail"]


def test_a_subdomain_without_an_soa_record_fails_yahoos_check(config, dns_server) -> None:
    _, report = doctor(config, dns_server, "news.customer.test", "--provider", "yahoo")
    assert not checks(report)["soa"]["ok"] and "no SOA record at news.customer.test" in checks(report)["soa"]["detail"]
    soa = {r["id"]: r for r in report["requirements"]}["soa"]
    assert soa["ok"] is False and soa["enforced_now"] == "rejection"


def test_a_requirement_mailpipe_cannot_see_is_unknown_with_what_would_supply_it(config, dns_server) -> None:
    code, report = doctor(config, dns_server, "example.test", "--ip", "127.0.0.1", "--provider", "gmail")
    spam_rate = {r["id"]: r for r in report["requirements"]}["spam_rate"]
    assert code == 0 and spam_rate["ok"] is None
    assert "Postmaster Tools" in spam_rate["unknown_without"] and spam_rate["detail"].startswith("unknown to mailpipe")


def test_gmails_move_from_deferring_to_rejecting_is_shown_with_its_dates(config, dns_server) -> None:
    _, report = doctor(config, dns_server, "example.test", "--ip", "127.0.0.1", "--provider", "gmail")
    ptr = {r["id"]: r for r in report["requirements"]}["ptr"]
    assert [(s["from"], s["action"]) for s in ptr["enforcement"]] == [("2024-02-01", "deferral"),
                                                                     ("2025-11", "rejection")]
    assert ptr["enforced_now"] == "rejection"


def test_the_readable_report_counts_unknown_requirements_apart_from_passed_ones(config, dns_server) -> None:
    result = subprocess.run([sys.executable, "-m", "mailpipe", "doctor", "example.test", "--ip", "127.0.0.1",
                             "--provider", "gmail", "--nameserver", dns_server.address, "--config", str(config)],
                            capture_output=True, text=True, timeout=60)
    assert "  ?     spam_rate" in result.stdout
    assert "unknown to mailpipe: needs the user-reported spam rate" in result.stdout
    assert result.stdout.rstrip().endswith("all checks pass; 3 requirements unknown (not passed)")
