"""Phone ↔ mail: a caller found by phone number however it is written, from the CLI and from
the authenticated HTTP lookup a phone system's screen-pop calls; call notes on cases shown in
``cases show`` and in the customer's next triage card."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.test_triage_pipeline import ROSTER, send

TOKEN = "screen-pop-token-0123456789"


def mailpipe(daemon: Daemon, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mailpipe", *args, "--config", str(daemon.config_path)],
                          capture_output=True, text=True, check=check)


@pytest.fixture
def desk_with_caller(make_daemon, tmp_path: Path) -> Daemon:
    """A customer with a phone number and an open case; a call noted on it."""
    daemon = make_daemon({**ROSTER, "desk": {"lookup_token": TOKEN}})
    csv = tmp_path / "customers.csv"
    csv.write_text("address,name,company,phone\ncustomer@example.org,鈴木 一郎,株式会社サンプル,03-1234-5678\n",
                   "utf-8")
    mailpipe(daemon, "customers", "import", str(csv))
    send(daemon, "請求書について", "請求書を再発行できますか。")
    daemon.delivered()
    mailpipe(daemon, "cases", "note", "1", "鈴木様より電話。明日までに再発行と約束", "--by", "yamada")
    return daemon


def lookup(daemon: Daemon, phone: str, token: str | None) -> tuple[int, bytes]:
    request = urllib.request.Request(f"{daemon.metrics_url}/customers?phone={urllib.parse.quote(phone)}")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_customers_show_finds_the_caller_by_any_spelling_of_the_number(desk_with_caller: Daemon) -> None:
    for spelling in ("03-1234-5678", "+81 3 1234 5678", "0312345678"):
        found = json.loads(mailpipe(desk_with_caller, "customers", "show", spelling, "--json").stdout)
        (customer,) = found["customers"]
        assert customer["address"] == "customer@example.org"
        assert customer["owner"]["phone"] in ("03-1234-5678", "03-1234-5679")
        assert [(c["id"], c["level"]) for c in customer["open_cases"]] == [(1, "normal")]
        assert customer["last_note"]["text"].startswith("鈴木様より電話")
    assert "Last note: #1" in mailpipe(desk_with_caller, "customers", "show", "0312345678").stdout


def test_the_http_lookup_refuses_a_request_without_the_token(desk_with_caller: Daemon) -> None:
    assert lookup(desk_with_caller, "03-1234-5678", None)[0] == 401
    assert lookup(desk_with_caller, "03-1234-5678", "wrong-token-0123456789")[0] == 401
    assert b"customer@example.org" not in lookup(desk_with_caller, "03-1234-5678", None)[1]


def test_the_http_lookup_answers_customer_owner_open_cases_and_last_note(desk_with_caller: Daemon) -> None:
    status, body = lookup(desk_with_caller, "+81 3 1234 5678", TOKEN)
    assert status == 200
    found = json.loads(body)
    assert found["phone"] == "+81312345678"
    (customer,) = found["customers"]
    assert (customer["name"], customer["company"]) == ("鈴木 一郎", "株式会社サンプル")
    assert customer["owner"]["id"] in ("yamada", "smith") and customer["owner"]["phone"].startswith("03-1234-567")
    assert customer["open_cases"][0]["level"] == "normal"
    assert customer["last_note"]["kind"] == "call"
    assert json.loads(lookup(desk_with_caller, "090-0000-0000", TOKEN)[1])["customers"] == []


def test_without_a_token_configured_the_lookup_is_off(make_daemon) -> None:
    daemon = make_daemon(ROSTER)
    assert lookup(daemon, "03-1234-5678", "")[0] == 404


def test_a_call_note_shows_in_cases_show_and_in_the_customers_next_triage_card(desk_with_caller: Daemon) -> None:
    shown = mailpipe(desk_with_caller, "cases", "show", "1").stdout
    assert "call: 鈴木様より電話。明日までに再発行と約束 (yamada)" in shown
    send(desk_with_caller, "Re: [#1] 請求書について", "まだ届いていません。")
    card = desk_with_caller.delivered(expect=2, cards=True)[1].get_payload(decode=True).decode()
    assert "Notes on case #1:" in card and "鈴木様より電話" in card
