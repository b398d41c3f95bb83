"""Configuration: embedded defaults, the operator's file over them, and errors that name the key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from mailpipe import config
from mailpipe.config import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "mailpipe.toml"
    path.write_text(text, "utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as error:
        config.load(path)
    return error.value.problems


def test_embedded_defaults_serve_support_at_localhost_with_two_demo_agents(monkeypatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", Path("/nonexistent/mailpipe.toml"))
    loaded = config.load()
    assert str(loaded.inbound.listen) == "127.0.0.1:2525"
    assert loaded.inbound.addresses == ("support@localhost",)
    assert str(loaded.metrics.listen) == "127.0.0.1:9325"
    assert [a.id for a in loaded.agents] == ["yamada", "smith"]
    assert loaded.delivery.method == "maildir"
    assert loaded.source == config.EMBEDDED


def test_state_lives_under_var_or_the_systemd_state_directory(monkeypatch) -> None:
    monkeypatch.setattr(config, "DEFAULT_CONFIG_PATH", Path("/nonexistent/mailpipe.toml"))
    monkeypatch.delenv("STATE_DIRECTORY", raising=False)
    assert config.load().state_path == Path("var")
    monkeypatch.setenv("STATE_DIRECTORY", "/var/lib/mailpipe")
    assert config.load().spool_path == Path("/var/lib/mailpipe/spool")
    assert config.load().maildir_root == Path("/var/lib/mailpipe/mailboxes")


def test_the_operators_file_merges_over_the_defaults_key_by_key(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, '[inbound]\nhostname = "mx.example.com"\nmax_message_size = "10MiB"\n'))
    assert loaded.inbound.hostname == "mx.example.com"
    assert loaded.inbound.max_message_size == 10 * 1024 * 1024
    assert str(loaded.inbound.listen) == "127.0.0.1:2525"
    assert loaded.source == str(tmp_path / "mailpipe.toml")


def test_durations_and_sizes_take_units(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, '[spool]\nretry_initial = "90s"\nretry_max = "2h"\nmax_lifetime = "5d"\n'
                                         '[inbound]\nidle_timeout = 45\nmax_message_size = 1000\n'))
    assert (loaded.spool.retry_initial, loaded.spool.retry_max, loaded.spool.max_lifetime) == (90, 7200, 432000)
    assert loaded.inbound.idle_timeout == 45
    assert loaded.inbound.max_message_size == 1000


def test_agents_replace_the_demo_roster(tmp_path: Path) -> None:
    loaded = config.load(write(tmp_path, '[[agents]]\nid = "sato"\nname = "佐藤"\naddress = "sato@example.com"\n'))
    assert [a.id for a in loaded.agents] == ["sato"]
    assert loaded.agents[0].tier == "support"


def test_every_bad_key_is_named_with_its_file(tmp_path: Path) -> None:
    path = write(tmp_path, 'log_level = "loud"\n[inbound]\nlisten = "nowhere"\nmax_message_size = "lots"\n'
                           'bogus = 1\n[delivery]\nmethod = "carrier-pigeon"\n')
    found = problems(path)
    assert f"{path}: log_level: 'loud' is not one of debug, info, warning, error" in found
    assert any(p.startswith(f"{path}: inbound.listen: ") for p in found)
    assert any(p.startswith(f"{path}: inbound.max_message_size: ") for p in found)
    assert f"{path}: inbound.bogus: unknown key" in found
    assert any(p.startswith(f"{path}: delivery.method: ") for p in found)


def test_a_toml_syntax_error_names_the_line(tmp_path: Path) -> None:
    (problem,) = problems(write(tmp_path, '[inbound]\nhostname = "unterminated\n'))
    assert "TOML syntax" in problem and "line 2" in problem


def test_bad_addresses_and_agent_ids_are_refused(tmp_path: Path) -> None:
    found = problems(write(tmp_path, '[inbound]\naddresses = ["support@"]\n'
                                     '[[agents]]\nid = "Bad Id"\nname = "x"\naddress = "x@example.com"\n'))
    assert any(p.startswith(f"{tmp_path}/mailpipe.toml: inbound.addresses[0]: ") for p in found)
    assert any(p.startswith(f"{tmp_path}/mailpipe.toml: agents[0].id: ") for p in found)


def test_values_with_line_breaks_are_refused_so_config_cannot_inject_headers(tmp_path: Path) -> None:
    found = problems(write(tmp_path, '[[agents]]\nid = "a"\nname = "Eve\\r\\nBcc: all@example.com"\n'
                                     'address = "a@example.com"\n'))
    assert any("agents[0].name" in p and "header injection" in p for p in found)


def test_tls_certificate_without_key_is_refused(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    found = problems(write(tmp_path, f'[inbound]\ntls_certificate = "{cert}"\n'))
    assert any("inbound.tls_key" in p for p in found)


def test_check_config_exits_0_for_a_good_file_and_1_naming_each_problem(tmp_path: Path) -> None:
    good = write(tmp_path, '[inbound]\nhostname = "mx.example.com"\n')
    ok = subprocess.run([sys.executable, "-m", "mailpipe", "check-config", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert "ok" in ok.stdout
    bad = write(tmp_path, '[spool]\nworkers = -1\nretry_initial = "soon"\n')
    failed = subprocess.run([sys.executable, "-m", "mailpipe", "check-config", str(bad)], capture_output=True,
                            text=True)
    assert failed.returncode == 1
    assert f"{bad}: spool.workers" in failed.stderr
    assert f"{bad}: spool.retry_initial" in failed.stderr


def test_check_config_on_a_missing_file_exits_1(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "mailpipe", "check-config", str(tmp_path / "none.toml")],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "cannot read" in result.stderr
