"""``make install`` as written, into a scratch root (DESTDIR): the program where the unit's
ExecStart points, the unit, the sysusers file, a commented config that loads, the manual page;
the installed unit verified and hardened as shipped. Nothing is started or enabled."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent

pytestmark = pytest.mark.skipif(shutil.which("systemd-analyze") is None or shutil.which("make") is None,
                                reason="systemd-analyze or make missing: `make test` installs them")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the checkout to install from: the build writes build/ and *.egg-info beside the
    sources, and the checkout's own are read meanwhile by tests running in the other worker."""
    copy = tmp_path_factory.mktemp("source") / "mailpipe"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__",
                                                               ".*_cache", ".hypothesis", "var"))
    return copy


@pytest.fixture(scope="module")
def staged(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    result = subprocess.run(["make", "-C", str(source), "install", f"DESTDIR={root}"], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return root


def exec_start(unit: Path) -> str:
    match = re.search(r"^ExecStart=(\S+)", unit.read_text(), re.MULTILINE)
    assert match
    return match[1]


@pytest.fixture
def installed_unit(staged: Path, tmp_path: Path) -> Path:
    """The installed unit, with ExecStart inside the scratch root: verify requires the binary to exist."""
    unit = staged / "usr/local/lib/systemd/system/mailpipe.service"
    program = exec_start(unit)
    copy = tmp_path / "mailpipe.service"
    copy.write_text(unit.read_text().replace(program, f"{staged}{program}"))
    return copy


def test_the_program_is_installed_where_the_units_execstart_points(staged: Path) -> None:
    program = exec_start(staged / "usr/local/lib/systemd/system/mailpipe.service")
    assert program == "/opt/mailpipe/bin/mailpipe"
    result = subprocess.run([f"{staged}{program}", "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("mailpipe ")
    assert (staged / "usr/local/sbin/mailpipe").readlink() == Path(program)


def test_the_installed_unit_verifies_without_a_word(installed_unit: Path) -> None:
    result = subprocess.run(["systemd-analyze", "verify", "--man=no", str(installed_unit)], capture_output=True,
                            text=True, cwd=installed_unit.parent, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""


def test_the_installed_unit_is_in_the_ok_exposure_band(installed_unit: Path) -> None:
    result = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(installed_unit)],
                            capture_output=True, text=True, cwd=installed_unit.parent, timeout=60)
    match = re.search(r"Overall exposure level for mailpipe.service: ([\d.]+) (\w+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match[1]) <= 2.0


def test_the_sysusers_file_and_the_manual_page_are_installed(staged: Path) -> None:
    assert re.search(r"^u mailpipe ", (staged / "usr/local/lib/sysusers.d/mailpipe.conf").read_text(), re.MULTILINE)
    assert (staged / "usr/local/share/man/man8/mailpipe.8").read_text().startswith(".TH MAILPIPE 8")


def test_the_sample_config_is_private_commented_and_loads(staged: Path) -> None:
    config = staged / "etc/mailpipe/mailpipe.toml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert stat.S_IMODE(config.parent.stat().st_mode) == 0o750
    text = config.read_text()
    assert 'state_directory = "/var/lib/mailpipe"' in text and "# EDIT" in text
    result = subprocess.run([f"{staged}/opt/mailpipe/bin/mailpipe", "check-config", str(config), "--user", "root"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "state in /var/lib/mailpipe" in result.stdout


def test_an_existing_config_is_kept_by_a_second_install(source: Path, staged: Path) -> None:
    config = staged / "etc/mailpipe/mailpipe.toml"
    config.write_text(config.read_text() + "# the operator's edit\n")
    result = subprocess.run(["make", "-C", str(source), "install", f"DESTDIR={staged}"], capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    assert config.read_text().endswith("# the operator's edit\n")


def test_the_install_starts_and_enables_nothing(staged: Path) -> None:
    assert not list(staged.rglob("*.wants"))
    assert not (staged / "var").exists()


def test_the_installed_program_runs_as_an_unprivileged_user(staged: Path) -> None:
    """The venv's interpreter must be one the service user can run (not a pyenv under /root)."""
    interpreter = (staged / "opt/mailpipe/bin/python").resolve()
    for part in [interpreter, *interpreter.parents]:
        assert part.stat().st_mode & stat.S_IXOTH, f"{part} is not searchable by other users"


def test_the_installed_program_starts_its_model_processes_with_its_own_code(staged: Path) -> None:
    """The urgency model's processes run isolated (-I -S) on the path the daemon hands them: the
    reader with no input ends at once, a fit of no examples answers None."""
    script = ("import pickle, subprocess; from mailpipe import children\n"
              "for entry, given in (('mailpipe.triage.reader:serve_on', b''),"
              " ('mailpipe.triage.fitting:fit_on', pickle.dumps(None))):\n"
              "    done = subprocess.run(children.command(entry), input=given, capture_output=True)\n"
              "    answer = pickle.loads(done.stdout) if done.stdout else ''\n"
              "    print(entry, done.returncode, answer, done.stderr[-300:])\n")
    result = subprocess.run([str(staged / "opt/mailpipe/bin/python"), "-c", script], capture_output=True, text=True,
                            timeout=120, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["mailpipe.triage.reader:serve_on 0  b''",
                                          "mailpipe.triage.fitting:fit_on 0 None b''"]
