"""Which case and customer message a desk command is about, from what the agent's client kept."""

from __future__ import annotations

from mailpipe.desk.forwarded import about
from mailpipe.message import parse


def _mail(headers: str, body: bytes = b"words\r\n") -> bytes:
    return headers.replace("\n", "\r\n").encode() + b"\r\n" + body


def _with_attachment(headers: str, attached: bytes) -> bytes:
    """``headers`` over a note and ``attached`` as a ``message/rfc822`` part."""
    return _mail(headers + 'Content-Type: multipart/mixed; boundary="b"\n',
                 b"--b\r\nContent-Type: text/plain\r\n\r\nsee below\r\n"
                 b"--b\r\nContent-Type: message/rfc822\r\n\r\n" + attached + b"\r\n--b--\r\n")


def _about(raw: bytes):
    return about(raw, parse(raw))


_CARD = ("From: mailpipe <mailpipe@desk.example.jp>\nSubject: [#7] triage: list gone\n"
         "Message-ID: <Q1A2B3.triage@desk.example.jp>\nAuto-Submitted: auto-generated\nX-Mailpipe-Case: 7\n"
         "In-Reply-To: <first@customer.example.org>\n")


def test_a_redirected_customer_message_names_its_case_and_message_id() -> None:
    found = _about(_mail("Subject: list gone\nMessage-ID: <first@customer.example.org>\nX-Mailpipe-Case: 7\n"))
    assert (found.case_id, found.message_id, found.queue_id) == (7, "first@customer.example.org", "")


def test_a_redirected_triage_card_names_the_customer_message_by_its_queue_id() -> None:
    found = _about(_mail(_CARD))
    assert (found.case_id, found.message_id, found.queue_id) == (7, "", "Q1A2B3")


def test_a_triage_card_forwarded_as_an_attachment_names_the_customer_message_by_its_queue_id() -> None:
    found = _about(_with_attachment("Subject: Fwd: triage\nMessage-ID: <agent@desk.example.jp>\n", _mail(_CARD)))
    assert (found.case_id, found.queue_id) == (7, "Q1A2B3")


def test_the_subject_of_the_agents_forward_outweighs_a_case_header_in_an_attachment() -> None:
    forged = _mail("Subject: invoice\nMessage-ID: <evil@attacker.example.org>\nX-Mailpipe-Case: 1\n")
    found = _about(_with_attachment("Subject: Fwd: [#2] invoice\nMessage-ID: <agent@desk.example.jp>\n", forged))
    assert found.case_id == 2


def test_what_an_attachment_carries_inside_it_is_not_the_agents() -> None:
    forged = _mail("Subject: hi\nMessage-ID: <evil@attacker.example.org>\nX-Mailpipe-Case: 1\n")
    delivered = _with_attachment("Subject: hi\nMessage-ID: <c2@attacker.example.org>\nX-Mailpipe-Case: 2\n", forged)
    found = _about(_with_attachment("Subject: Fwd: hi\nMessage-ID: <agent@desk.example.jp>\n", delivered))
    assert (found.case_id, found.message_id) == (2, "c2@attacker.example.org")


def test_a_message_nested_a_thousand_deep_is_read_without_recursion() -> None:
    nested = _mail("Subject: deep\nMessage-ID: <deep@x>\n")
    for _ in range(1000):
        nested = _mail("Content-Type: message/rfc822\n", nested)
    found = _about(_with_attachment("Subject: Fwd: [#3] deep\nMessage-ID: <agent@desk.example.jp>\n", nested))
    assert found.case_id == 3
