"""The unit file: valid for systemd, hardened into the "OK" exposure band."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNIT = Path(__file__).parent.parent / "systemd" / "mailpipe.service"

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                                reason="systemd-analyze missing: `make test` installs it")


@pytest.fixture
def unit(tmp_path: Path) -> Path:
    """The shipped unit with ExecStart pointing at this checkout's mailpipe, which verify requires to exist."""
    executable = Path(sys.executable).parent / "mailpipe"
    copy = tmp_path / "mailpipe.service"
    copy.write_text(UNIT.read_text().replace("/opt/mailpipe/bin/mailpipe", str(executable)))
    return copy


def test_systemd_analyze_verify_has_nothing_to_say(unit: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)], capture_output=True, text=True,
                            cwd=unit.parent, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_exposure_is_in_the_ok_band(unit: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(unit)], capture_output=True,
                            text=True, cwd=unit.parent, timeout=60)
    match = re.search(r"Overall exposure level for mailpipe.service: ([\d.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= 2.0
    assert match[2] == "OK"


def test_the_unit_is_type_notify_with_watchdog_reload_and_only_the_bind_capability() -> None:
    text = UNIT.read_text()
    assert "Type=notify\n" in text
    assert re.search(r"^WatchdogSec=\d+", text, re.MULTILINE)
    assert "ExecReload=/bin/kill -HUP $MAINPID" in text
    assert "CapabilityBoundingSet=CAP_NET_BIND_SERVICE\n" in text
    assert "StateDirectory=mailpipe" in text and "ConfigurationDirectory=mailpipe" in text


def test_the_sysusers_file_creates_the_units_user() -> None:
    sysusers = (UNIT.parent / "mailpipe.sysusers").read_text()
    assert re.search(r"^u mailpipe ", sysusers, re.MULTILINE)
    assert "User=mailpipe" in UNIT.read_text()
