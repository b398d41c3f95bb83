"""Each agent's reply's fate on its case, end to end: queued, held (and why), sent (accepted by
which host), deferred, bounced, deleted — in ``cases show``, in the customer's next triage card
and in metrics; the notices agents get carry the case token and thread under the case."""

from __future__ import annotations

import json
import subprocess
import sys
from email.header import decode_header, make_header

from tests.conftest import Daemon, mutt_view
from tests.test_delivery import queue_list, wait_until
from tests.test_lifecycle import metrics
from tests.test_outbound import (
    customer_writes,
    delivered_to_owner,
    desk,
    mx,
    owner_reply,
    replies_at_mx,
    submit,
)

__all__ = ["desk", "mx"]  # fixtures shared with the outbound tests

NAMES = {"yamada": "山田 太郎", "smith": "Alex Smith"}


def case_json(daemon: Daemon, case: int = 1) -> dict:
    shown = subprocess.run([sys.executable, "-m", "mailpipe", "cases", "show", str(case), "--json", "--config",
                            str(daemon.config_path)], capture_output=True, text=True, check=True)
    return json.loads(shown.stdout)


def case_text(daemon: Daemon, case: int = 1) -> str:
    return subprocess.run([sys.executable, "-m", "mailpipe", "cases", "show", str(case), "--config",
                           str(daemon.config_path)], capture_output=True, text=True, check=True).stdout


def started_case(daemon: Daemon) -> tuple[str, str, str]:
    """(the customer's Message-ID, the owner, the other agent)."""
    message_id = customer_writes(daemon)
    (original,) = delivered_to_owner(daemon)
    owner = str(original["X-Mailpipe-Owner"]).split()[0]
    return message_id, owner, next(agent for agent in NAMES if agent != owner)


def reply_as(daemon: Daemon, agent: str, message_id: str, case: int = 1) -> str:
    address = f"{agent}@example.test"
    raw = owner_reply(message_id, case, sender=address, name=NAMES[agent])
    submit(daemon, raw, user=agent, sender=address)
    return message_id_of(raw)


def message_id_of(raw: bytes) -> str:
    return next(line.split(b":", 1)[1].strip().decode() for line in raw.splitlines()
                if line.lower().startswith(b"message-id:"))


def notices(daemon: Daemon, agent: str, marker: str) -> list:
    return [mutt_view(path) for path in sorted(daemon.mailbox(agent).glob(f"new/*{marker}*"))]


def subject(message) -> str:
    return str(make_header(decode_header(message["Subject"])))


def test_an_accepted_reply_is_sent_by_which_host_and_answers_the_case(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    message_id, owner, _ = started_case(daemon)
    reply_as(daemon, owner, message_id)
    replies_at_mx(mx)
    wait_until(lambda: case_json(daemon)["replies"][0]["fate"] == "sent")
    shown = case_json(daemon)
    assert shown["status"] == "answered" and shown["first_response_at"] is not None
    assert shown["replies"][0]["detail"] == "accepted by mx.customer.test (250)"
    assert "sent " in case_text(daemon) and "accepted by mx.customer.test" in case_text(daemon)
    assert metrics(daemon)[("mailpipe_reply_fates_total", (("fate", "sent"),))] == 1


def test_a_bounced_reply_reopens_the_case_and_its_notice_reaches_author_and_owner_in_the_cases_thread(
        desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    message_id, owner, other = started_case(daemon)
    mx.refuse_always("RCPT", "550 5.1.2 The recipient domain does not exist")
    reply_id = reply_as(daemon, other, message_id)
    wait_until(lambda: notices(daemon, other, "D0") and notices(daemon, owner, "D0"))
    for agent in (other, owner):
        (dsn,) = notices(daemon, agent, "D0")
        assert subject(dsn).startswith("[#1] ")
        assert dsn["In-Reply-To"] == reply_id
        assert dsn["References"].split() == [f"<{message_id}>", reply_id]
    shown = case_json(daemon)
    assert shown["status"] == "open" and shown["first_response_at"] is None
    (reply,) = shown["replies"]
    assert reply["fate"] == "bounced" and "550 5.1.2" in reply["detail"]
    assert metrics(daemon)[("mailpipe_reply_fates_total", (("fate", "bounced"),))] == 1


def owners_reply_refused(desk, mx, refusal: str, fate: str) -> Daemon:
    """A case whose owner's reply the customer's MX refuses with ``refusal``, once it is ``fate``."""
    daemon = desk({"outbound": {"autoreply": False}})
    message_id, owner, _ = started_case(daemon)
    mx.refuse_always("RCPT", refusal)
    reply_as(daemon, owner, message_id)
    wait_until(lambda: case_json(daemon)["replies"][0]["fate"] == fate)
    return daemon


def test_the_customers_next_triage_card_tells_what_became_of_our_reply(desk, mx) -> None:
    daemon = owners_reply_refused(desk, mx, "550 5.1.1 No such user", "bounced")
    customer_writes(daemon, "Re: [#1] メールが届きません")
    card = daemon.delivered(expect=2, cards=True)[1].get_payload(decode=True).decode()
    assert "Our latest replies to this customer:" in card
    assert "bounced" in card and "550 5.1.1 No such user" in card


def test_a_held_reply_shows_held_and_why_and_its_note_gives_desk_time_and_threads_under_the_case(
        desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    message_id, owner, other = started_case(daemon)
    reply_as(daemon, owner, message_id)
    replies_at_mx(mx)
    held_id = reply_as(daemon, other, message_id)
    wait_until(lambda: notices(daemon, other, "H"))
    (note,) = notices(daemon, other, "H")
    assert subject(note).startswith("[#1] held: ")
    assert note["In-Reply-To"] == held_id and note["References"].split() == [f"<{message_id}>", held_id]
    body = note.get_payload(decode=True).decode()
    assert " JST" in body and "UTC" not in body and "mailpipe queue" not in body
    fates = {r["agent"]: r for r in case_json(daemon)["replies"]}
    assert fates[other]["fate"] == "held" and f"double reply: {owner} already answered" in fates[other]["detail"]
    assert metrics(daemon)[("mailpipe_reply_fates_total", (("fate", "held"),))] == 1


def test_a_deferred_reply_shows_its_last_refusal_and_once_deleted_shows_deleted_not_sent(desk, mx) -> None:
    daemon = owners_reply_refused(desk, mx, "451 4.3.0 Mailbox busy", "deferred")
    assert "451 4.3.0 Mailbox busy" in case_json(daemon)["replies"][0]["detail"]
    (entry,) = queue_list(daemon)
    subprocess.run([sys.executable, "-m", "mailpipe", "queue", "delete", entry["id"], "--config",
                    str(daemon.config_path)], check=True, capture_output=True)
    shown = case_json(daemon)
    assert shown["replies"][0]["fate"] == "deleted" and shown["status"] == "open"
    assert "deleted" in case_text(daemon)


def test_the_author_releases_a_held_reply_by_mail_as_the_held_note_says(desk, mx) -> None:
    daemon = desk({"outbound": {"autoreply": False}})
    message_id, owner, other = started_case(daemon)
    reply_as(daemon, owner, message_id)
    replies_at_mx(mx)
    reply_as(daemon, other, message_id)
    wait_until(lambda: notices(daemon, other, "H"))
    (note,) = notices(daemon, other, "H")
    assert "release+1@example.test" in note.get_payload(decode=True).decode()
    submit(daemon, f"From: {other}@example.test\r\nTo: release+1@example.test\r\nSubject: Fwd: [#1] held\r\n"
                   f"Message-ID: <release1@example.test>\r\n\r\nsend it\r\n".encode(),
           user=other, sender=f"{other}@example.test", rcpts=("release+1@example.test",))
    assert len(replies_at_mx(mx, 2)) == 2
    wait_until(lambda: {r["agent"]: r["fate"] for r in case_json(daemon)["replies"]}[other] == "sent")
