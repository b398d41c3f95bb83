"""Hostile input at the operator's CLI, replayed through the real command: files and spools that
are not what they claim get a message naming file, row and column, never a traceback, and
text that came from mail never drives the operator's terminal."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mailpipe.deliver.headers import field
from mailpipe.spool import Envelope, Spool
from mailpipe.store.sqlite import SQLiteStore

ESCAPES = "\x1b]0;pwned\x07\x1b[2J\x1b[31m\u202e"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "mailpipe.toml"
    path.write_text(f'state_directory = "{tmp_path / "state"}"\n'
                    '[[agents]]\nid = "yamada"\nname = "Yamada"\naddress = "yamada@example.test"\nphone = "1"\n')
    return path


def mailpipe(config: Path, *args: str, stdin: bytes = b"") -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "mailpipe", *args, "--config", str(config)], input=stdin,
                          capture_output=True, timeout=60)


def refused_cleanly(result: subprocess.CompletedProcess[bytes], *words: str) -> str:
    stderr = result.stderr.decode("utf-8", "replace")
    assert result.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    for word in words:
        assert word in stderr, stderr
    return stderr


def customers(config: Path) -> list[str]:
    store = SQLiteStore(config.parent / "state" / "store.sqlite")
    try:
        return [row[0] for row in store._conn().execute("SELECT address FROM customers ORDER BY address")]
    finally:
        store.close()


GOOD_ROWS = "a@example.org,Alice\r\nb@example.org,Bob\r\n"


@pytest.mark.parametrize(("tail", "words"), [
    (b"c@example.org,Carol,extra\r\n", ("csv:4", "3 fields where the header has 2")),
    (b"c@example.org,Caf\xe9\r\n", ("csv:4", "not UTF-8", "0xe9")),
    (b"c@example.org," + b"x" * 200_000 + b"\r\n", ("csv:4", "column name", "200000 characters")),
    (b"c@example.org,Carol\x00Evil\r\n", ("csv:4", "column name", "U+0000")),
    (b"c@example.org,Carol\x1b[31m\r\n", ("csv:4", "column name", "U+001B")),
])
def test_a_broken_customers_csv_names_row_and_column_and_imports_nothing(config: Path, tmp_path: Path, tail,
                                                                          words) -> None:
    path = tmp_path / "customers.csv"
    path.write_bytes(b"address,name\r\n" + GOOD_ROWS.encode() + tail)
    refused_cleanly(mailpipe(config, "customers", "import", str(path)), *words, "nothing imported")
    assert customers(config) == []  # all or nothing: the good rows before the bad one are not kept


def test_a_good_customers_csv_is_imported_in_one_go(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "customers.csv"
    path.write_bytes(b"\xef\xbb\xbfaddress,name,notes\r\n"
                     b'a@example.org,Alice,"two\r\nlines"\r\nb@example.org,Bob,\r\n')
    result = mailpipe(config, "customers", "import", str(path))
    assert result.returncode == 0, result.stderr
    assert customers(config) == ["a@example.org", "b@example.org"]


def test_a_control_character_never_reaches_a_header_we_write() -> None:
    assert field("X-Mailpipe-Customer", "a@example.org; name=Carol\x00Evil\x1b[2J\x7f") == \
        b"X-Mailpipe-Customer: a@example.org; name=Carol Evil [2J\r\n"


def test_store_import_refuses_column_names_that_are_not_the_tables(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "export.jsonl"
    path.write_text('{"table": "customers", "row": {"address": "a@b", "created_at": 1,'
                    ' "name) VALUES (1, 2); DROP TABLE cases; --": 1}}\n')
    refused_cleanly(mailpipe(config, "store", "import", str(path)), "unknown column(s)", "'customers'")
    assert customers(config) == []


@pytest.mark.parametrize("content", [b'{"table": "customers"\n', b"\xff\xfe\n", b"[1, 2]\n"])
def test_store_import_of_a_file_that_is_no_export_names_the_line(config: Path, tmp_path: Path, content) -> None:
    path = tmp_path / "export.jsonl"
    path.write_bytes(b"\n" + content)
    refused_cleanly(mailpipe(config, "store", "import", str(path)), "export.jsonl:2", "nothing imported")


def test_agents_passwd_with_a_non_utf8_password_on_stdin_changes_nothing(config: Path) -> None:
    result = mailpipe(config, "agents", "passwd", "yamada", "--password-stdin", stdin=b"abc\xff\xfedefghijklmn\n")
    refused_cleanly(result, "not UTF-8", "nothing changed")


@pytest.mark.parametrize("command", [("queue", "list"), ("queue", "show", "X"), ("serve",)])
def test_a_corrupt_spool_file_is_named_not_a_traceback(config: Path, command) -> None:
    spool_file = config.parent / "state" / "spool" / "inbound.sqlite"
    spool_file.parent.mkdir(parents=True)
    spool_file.write_bytes(b"SQLite format 3\x00" + bytes(range(256)) * 16)
    refused_cleanly(mailpipe(config, *command), str(spool_file), "cannot be opened")


def spooled(config: Path) -> str:
    async def enqueue() -> str:
        spool = Spool(config.parent / "state" / "spool" / "inbound.sqlite")
        try:
            envelope = Envelope(f"evil{ESCAPES}@example.org", (f"support{ESCAPES}@example.test",), "192.0.2.1",
                                "client", "inbound")
            return await spool.enqueue(envelope, f"Subject: {ESCAPES}\r\n\r\nbody{ESCAPES}\r\n".encode())
        finally:
            spool.close()

    return asyncio.run(enqueue())


def assert_inert(output: bytes) -> None:
    assert b"\x1b" not in output and b"\x07" not in output and "\u202e".encode() not in output, output
    assert b"\\x1b]0;pwned\\x07" in output


@pytest.mark.parametrize("command", [("queue", "list"), ("queue", "show")])
def test_queue_commands_show_control_sequences_from_an_envelope_escaped(config: Path, command) -> None:
    qid = spooled(config)
    result = mailpipe(config, *command, *([qid] if command[1] == "show" else []))
    assert result.returncode == 0, result.stderr
    assert_inert(result.stdout)


def test_cases_commands_show_control_sequences_from_a_subject_escaped(config: Path) -> None:
    config.parent.joinpath("state").mkdir()
    store = SQLiteStore(config.parent / "state" / "store.sqlite")
    record = store.record_inbound(
        queue_id="Q1", address="evil@example.org", name=f"Eve{ESCAPES}", message_id="m1@example.org",
        subject=f"hello{ESCAPES}", level="normal", score=0.0, rules="", case_id=None,
        decide=lambda owner, load: (("yamada", "owner", "test"),), escalated_to="", at=time.time())
    store.close()
    for command in (("cases", "list"), ("cases", "show", str(record.case.id))):
        result = mailpipe(config, *command)
        assert result.returncode == 0, result.stderr
        assert_inert(result.stdout)


REPORT = ('<?xml version="1.0" encoding="{encoding}"?>\n<feedback><report_metadata><org_name>x</org_name>'
          "<email>a@b.example</email><report_id>1</report_id><date_range><begin>1700000000</begin>"
          "<end>{end}</end></date_range></report_metadata><policy_published><domain>example.test</domain>"
          "<p>none</p></policy_published><record><row><source_ip>192.0.2.1</source_ip><count>{count}</count>"
          "<policy_evaluated><disposition>none</disposition><dkim>pass</dkim><spf>pass</spf></policy_evaluated>"
          "</row><identifiers><header_from>example.test</header_from></identifiers></record></feedback>\n")


@pytest.mark.parametrize(("values", "words"), [
    ({"count": "1e999"}, ("row/count", "'1e999' is not a number")),
    ({"end": "99999999999999999999"}, ("date_range/end", "out of range")),
    ({"encoding": "x-unknown-enc"}, ("unknown XML encoding",)),
])
def test_dmarc_import_of_a_hostile_report_names_the_file_and_the_value(config: Path, tmp_path: Path, values,
                                                                       words) -> None:
    path = tmp_path / "report.xml"
    path.write_text(REPORT.format(**{"encoding": "UTF-8", "end": "1700086400", "count": "1", **values}))
    refused_cleanly(mailpipe(config, "dmarc", "import", str(path)), str(path), *words)


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10"], ids=["empty", "png"])
def test_learn_refuses_a_file_that_is_no_message_and_teaches_nothing(config: Path, content: bytes) -> None:
    saved = config.parent / "picture.eml"
    saved.write_bytes(content)
    refused_cleanly(mailpipe(config, "learn", "--level", "low", str(saved)), str(saved), "nothing added")
    assert not list(config.parent.glob("state/**/learned.toml"))


@pytest.mark.parametrize("case", ["99999999999999999999", "1234567890"])
def test_learn_says_there_is_no_such_case_for_a_number_no_case_has(config: Path, case: str) -> None:
    (config.parent / "state").mkdir()
    SQLiteStore(config.parent / "state" / "store.sqlite").close()
    refused_cleanly(mailpipe(config, "learn", "--level", "high", case), f"no case #{case}")


def test_learn_takes_a_superscript_digit_for_a_file_name_not_a_case(config: Path) -> None:
    refused_cleanly(mailpipe(config, "learn", "--level", "low", "²"), "²")
