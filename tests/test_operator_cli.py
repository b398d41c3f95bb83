"""What an operator meets on the first day: where the state is, one-pass config checks, private
files, and CSV values that cannot be read."""

from __future__ import annotations

import json
import os
import pwd
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mailpipe import config as configuration


@pytest.fixture
def state(tmp_path: Path) -> Path:
    return tmp_path / "state"


@pytest.fixture
def config(tmp_path: Path, state: Path) -> Path:
    path = tmp_path / "mailpipe.toml"
    path.write_text(f'state_directory = "{state}"\n')
    return path


def mailpipe(*args: str, cwd: Path | None = None, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "STATE_DIRECTORY"}
    return subprocess.run([sys.executable, "-m", "mailpipe", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=env, input=stdin)


# -- one place for state --------------------------------------------------------------------------

def test_the_installed_config_without_state_directory_finds_the_units_state_directory(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    installed = tmp_path / "etc" / "mailpipe.toml"
    installed.parent.mkdir()
    installed.write_text('log_level = "info"\n')
    monkeypatch.setattr(configuration, "DEFAULT_CONFIG_PATH", installed)
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert configuration.load().state_path == configuration.SYSTEM_STATE_DIRECTORY


def test_systemds_state_directory_comes_before_the_quick_starts_var(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/srv/mailpipe-state")
    assert configuration.load(None).state_path == Path("/srv/mailpipe-state")


def test_the_configs_state_directory_comes_first(config: Path, state: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STATE_DIRECTORY", "/srv/mailpipe-state")
    assert configuration.load(config).state_path == state


def test_reading_commands_without_a_store_say_where_they_looked_and_create_nothing(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for command in (["cases", "list"], ["customers", "show", "a@example.com"], ["incidents"], ["agents", "list"]):
        result = mailpipe(*command, cwd=elsewhere)
        assert result.returncode == 1, command
        assert f"no store at {elsewhere / 'var' / 'store.sqlite'}" in result.stderr
        assert "looked at:" in result.stderr and "$STATE_DIRECTORY" in result.stderr
    assert list(elsewhere.iterdir()) == []


# -- check-config in one pass ---------------------------------------------------------------------

def test_check_config_lists_every_problem_in_one_pass(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[inbound]\nmax_recipients = "lots"\n[triage]\ntimezone = "Asia/Tokio"\nbusiness_hours = "9-18"\n'
                   '[[dkim]]\ndomain = "example.com"\nselector = "s"\nkey_file = "/nonexistent/s.key"\n')
    result = mailpipe("check-config", str(bad))
    assert result.returncode == 1
    for expected in ("inbound.max_recipients", "triage.timezone: unknown time zone 'Asia/Tokio'",
                     "triage.business_hours: '9-18'", "dkim[0].key_file: no such file"):
        assert expected in result.stderr


def test_check_config_refuses_an_unknown_placeholder_in_a_footer(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[outbound]\nfooter_ja = "担当 {nmae}"\n')
    result = mailpipe("check-config", str(bad))
    assert result.returncode == 1
    assert "outbound.footer_ja: unknown placeholder {nmae}" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="judging another user's access needs root")
def test_check_config_as_root_refuses_a_key_the_daemons_user_cannot_read(tmp_path: Path) -> None:
    tmp_path.chmod(0o755)
    key = tmp_path / "example.com.s.key"
    assert mailpipe("dkim", "keygen", "--domain", "example.com", "--selector", "s",
                    "--directory", str(tmp_path)).returncode == 0
    good = tmp_path / "mailpipe.toml"
    good.write_text(f'[[dkim]]\ndomain = "example.com"\nselector = "s"\nkey_file = "{key}"\n')
    assert mailpipe("check-config", str(good), "--user", "root").returncode == 0
    result = mailpipe("check-config", str(good), "--user", "nobody")
    assert result.returncode == 1
    assert f"dkim[0].key_file: '{key}' is not readable by nobody" in result.stderr


# -- private files --------------------------------------------------------------------------------

def test_store_export_is_readable_by_its_owner_only(config: Path, tmp_path: Path) -> None:
    csv = tmp_path / "customers.csv"
    csv.write_text("address,phone,notes\na@example.com,03-0000-0000,prefers phone\n")
    assert mailpipe("customers", "import", str(csv), "--config", str(config)).returncode == 0
    export = tmp_path / "export.jsonl"
    export.write_text("")
    export.chmod(0o644)
    assert mailpipe("store", "export", str(export), "--config", str(config)).returncode == 0
    assert stat.S_IMODE(export.stat().st_mode) == 0o600
    assert "03-0000-0000" in export.read_text()


def test_dkim_keygen_prints_the_path_its_owner_and_the_chown_the_daemon_needs(tmp_path: Path) -> None:
    result = mailpipe("dkim", "keygen", "--domain", "example.com", "--selector", "s", "--directory", str(tmp_path))
    key = tmp_path / "example.com.s.key"
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    me = pwd.getpwuid(os.geteuid()).pw_name
    assert f"wrote {key} (mode 0600, owner {me})" in result.stdout
    assert f"chown mailpipe:mailpipe {key}" in result.stdout


def test_dkim_keygens_help_names_where_it_writes() -> None:
    assert "/etc/mailpipe/dkim" in mailpipe("dkim", "keygen", "--help").stdout


# -- CSV values ---------------------------------------------------------------------------------

def test_customers_import_refuses_a_vip_value_it_cannot_read_with_row_and_column(config: Path,
                                                                               tmp_path: Path) -> None:
    csv = tmp_path / "customers.csv"
    csv.write_text("address,name,vip\na@example.com,A,yes\nb@example.com,B,maybe\n")
    result = mailpipe("customers", "import", str(csv), "--config", str(config))
    assert result.returncode == 1
    assert f"{csv}:3: column 3 (vip): 'maybe'" in result.stderr
    assert "1 customers imported, 1 rows refused" in result.stdout
    assert mailpipe("customers", "show", "b@example.com", "--config", str(config)).returncode == 1


# -- an operator's CLI ----------------------------------------------------------------------------

def test_every_command_has_examples_in_its_help() -> None:
    from mailpipe.cli import _parser
    from mailpipe.cli.manual import missing_examples, walk

    parser = _parser()
    assert missing_examples(parser) == []
    assert {"queue list", "rules show", "check-config", "help"} <= {name for name, _ in walk(parser)}
    result = mailpipe("queue", "flush", "--help")
    assert "examples:\n  mailpipe queue flush" in result.stdout


def test_the_manual_page_is_generated_from_the_same_help(tmp_path: Path) -> None:
    result = mailpipe("help", "--man")
    assert result.returncode == 0
    page = result.stdout
    assert page.startswith(".TH MAILPIPE 8")
    assert ".SS queue list" in page and ".SS rules show" in page
    assert "mailpipe queue flush" in page and "runuser \\-u mailpipe" in page
    manual = tmp_path / "mailpipe.8"
    manual.write_text(page)
    rendered = subprocess.run(["man", "-l", str(manual)], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "MANWIDTH": "100"})
    if rendered.returncode == 0:  # man-db is optional here; the roff itself is what ships
        assert "COMMANDS" in rendered.stdout


def test_help_on_one_command() -> None:
    assert "mailpipe rules show NOT_DELIVERED" in mailpipe("help", "rules", "show").stdout
    assert mailpipe("help", "nonsense").returncode == 2


def test_rules_list_names_every_rule_with_its_score() -> None:
    result = mailpipe("rules", "list")
    assert result.returncode == 0
    assert any(line.split()[:2] == ["NOT_DELIVERED", "2.5"] for line in result.stdout.splitlines())
    assert any(line.split()[:2] == ["MODEL_CRITICAL", "16"] for line in result.stdout.splitlines())


def test_rules_show_prints_the_rule_as_written_with_its_file() -> None:
    result = mailpipe("rules", "show", "not_delivered")
    assert result.returncode == 0
    assert 'name = "NOT_DELIVERED"' in result.stdout and "urgency.toml" in result.stdout
    assert "examples = " in result.stdout
    missing = mailpipe("rules", "show", "NO_SUCH_RULE")
    assert missing.returncode == 1 and "no such rule" in missing.stderr


def test_doctor_against_a_silent_dns_server_names_the_server_not_the_domain() -> None:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a DNS server that never answers
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    try:
        result = mailpipe("doctor", "example.com", "--nameserver", f"127.0.0.1:{port}", "--json")
    finally:
        silent.close()
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert [check["name"] for check in report["checks"]] == ["dns.server"]
    assert f"127.0.0.1:{port}" in report["checks"][0]["detail"]
