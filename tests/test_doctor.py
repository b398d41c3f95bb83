"""`mailpipe doctor`: a sending domain's DNS authentication, checked against unbound serving the
test zones, with the record to publish for each failure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.dns_peer import DKIM_SELECTOR, dkim_private_key


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config that signs example.test and misconfigured.test with the key example.test publishes."""
    key = tmp_path / "sel.key"
    key.write_bytes(dkim_private_key())
    path = tmp_path / "mailpipe.toml"
    tables = "".join(f'[[dkim]]\ndomain = "{domain}"\nselector = "{DKIM_SELECTOR}"\nkey_file = "{key}"\n'
                     for domain in ("example.test", "misconfigured.test"))
    path.write_text(f'[outbound]\nhostname = "localhost"\n{tables}')
    return path


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
    assert {"spf.record", "spf.lookups", "spf.authorized.127.0.0.1", "dkim.sel", "dmarc.record", "dmarc.rua",
            "dmarc.alignment", "ptr.127.0.0.1", "mx"} <= names
    assert all(name.split(".")[0] in ("spf", "dkim", "dmarc", "ptr", "mx") for name in names)


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
