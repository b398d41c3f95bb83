"""``mailpipe replies explain``: a pasted reply's provider, class, meaning, action and source."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def explain(*args: str, stdin: str = "", config: Path | None = None) -> subprocess.CompletedProcess[str]:
    options = ["--config", str(config)] if config else []
    return subprocess.run([sys.executable, "-m", "mailpipe", "replies", "explain", *options, *args], input=stdin,
                          capture_output=True, text=True, timeout=60)


GMAIL_PASTE = ("550-5.7.26 This mail has been blocked because the sender is unauthenticated.\n"
               "550-5.7.26 Gmail requires all senders to authenticate with either SPF or DKIM.\n"
               "550 5.7.26  https://support.google.com/mail/answer/81126 - gsmtp")


def test_a_multi_line_gmail_reply_is_explained_with_provider_class_meaning_action_and_source() -> None:
    result = explain(GMAIL_PASTE)
    assert result.returncode == 0, result.stderr
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
    assert lines["Provider"].split()[0] == "google"
    assert lines["Class"].strip() == "authentication"
    assert "SPF" in lines["Meaning"] and lines["Action"].strip()
    assert "support.google.com" in lines["Source"]


def test_json_gives_one_object_with_provider_class_meaning_and_source() -> None:
    result = explain("--json", "--mx", "mta7.am0.yahoodns.net", "421 4.7.0 [TSS04] Messages from 192.0.2.1 "
                     "temporarily deferred due to unexpected volume or user complaints - 4.16.55.1")
    document = json.loads(result.stdout)
    assert (document["provider"], document["class"]) == ("yahoo", "reputation")
    assert document["meaning"] and document["source"] and document["since"] and document["action"]


def test_the_provider_can_be_named_by_an_alias() -> None:
    result = explain("--json", "--provider", "outlook", "550 5.7.515 Access denied, sending domain EXAMPLE.JP "
                     "doesn't meet the required authentication level.")
    assert (json.loads(result.stdout)["provider"], json.loads(result.stdout)["class"]) == \
        ("microsoft", "authentication")


def test_without_a_provider_the_catalog_entry_that_matches_names_it() -> None:
    document = json.loads(explain("--json", "550 Unknown user taro@docomo.ne.jp").stdout)
    assert document["provider"] == "docomo"
    assert "2025-03-13" in document["meaning"]


def test_dash_reads_one_reply_a_line_joining_continuation_lines() -> None:
    stdin = GMAIL_PASTE + "\n" + "554 delivery error: dd This user doesn't have a yahoo.com account (x@yahoo.com)\n"
    result = explain("--json", "-", stdin=stdin)
    documents = [json.loads(line) for line in result.stdout.splitlines()]
    assert [(d["provider"], d["class"]) for d in documents] == [("google", "authentication"), ("yahoo", "recipient")]


def test_an_unknown_text_from_a_known_provider_says_so_and_exits_1() -> None:
    result = explain("--json", "--mx", "mx.softbank.ne.jp", "550 5.7.1 なりすましメールの拒否")
    document = json.loads(result.stdout)
    assert (result.returncode, document["provider"], document["class"]) == (1, "softbank", "unknown")
    assert "override directory" in document["action"]


def test_a_provider_nobody_knows_is_a_clear_error_not_a_traceback() -> None:
    result = explain("--provider", "compuserve", "550 5.1.1 no")
    assert result.returncode == 1
    assert result.stderr.startswith("mailpipe: replies: unknown provider 'compuserve'")
    assert "Traceback" not in result.stderr


def test_the_sites_own_entries_are_used(tmp_path: Path) -> None:
    (tmp_path / "replies.d").mkdir()
    (tmp_path / "replies.d" / "site.toml").write_text(
        '[[replies]]\nprovider = "softbank"\npattern = "なりすまし"\nclass = "authentication"\n'
        'meaning = "DMARC refusal"\nsource = "seen 2026-11-29"\nsince = "2026-11-29"\n', "utf-8")
    config = tmp_path / "mailpipe.toml"
    config.write_text(f'[outbound]\nreplies_overrides = "{tmp_path / "replies.d"}"\n', "utf-8")
    document = json.loads(explain("--json", "--mx", "mx.softbank.ne.jp", "550 5.7.1 なりすましメールの拒否",
                                  config=config).stdout)
    assert (document["class"], document["meaning"]) == ("authentication", "DMARC refusal")
