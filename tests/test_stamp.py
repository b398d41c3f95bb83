"""The stamp: owner and phone in every body part, in the part's own charset, exactly once."""

from __future__ import annotations

import base64
import email
import email.message
import quopri
from email import policy

import pytest

from mailpipe.message import charsets, parse
from mailpipe.outbound.footer import render
from mailpipe.outbound.stamp import HTML_CLASS, customer_subject, stamp

FOOTER = "このメールについてお電話でのお問い合わせは、担当 山田（03-1234-5678）までご連絡ください。"
EN_FOOTER = "Questions about this e-mail by phone: call Alex Smith & co <desk> on 03-1234-5679."
NOW = 1_790_000_000.0
# ISO-2022-JP as Japanese clients send it (CP50220): 「①お世話になっております。」
JIS_BODY = b"\x1b$B-!$*@$OC$K$J$C$F$*$j$^$9!#\x1b(B\r\n"


def message(body: bytes, content_type: str = "text/plain; charset=ISO-2022-JP", cte: str = "7bit",
            extra: str = "") -> bytes:
    return (f"From: yamada@example.test\r\nTo: customer@example.org\r\nSubject: Re: question\r\n{extra}"
            f"MIME-Version: 1.0\r\nContent-Type: {content_type}\r\nContent-Transfer-Encoding: {cte}\r\n\r\n"
            ).encode() + body


def parts(raw: bytes) -> list[email.message.Message]:
    return [p for p in email.message_from_bytes(raw, policy=policy.compat32).walk() if not p.is_multipart()]


def text_of(part: email.message.Message) -> str:
    return charsets.decode(part.get_payload(decode=True), charsets.normalise(part.get_content_charset()))


def alternative(plain_cte: str = "quoted-printable", html_cte: str = "base64") -> bytes:
    plain = "お世話になっております。\n\n山田\n"
    page = "<html><body><p>お世話になっております。</p></body></html>"
    mime = email.message.EmailMessage()
    mime["From"] = "yamada@example.test"
    mime["To"] = "customer@example.org"
    mime["Subject"] = "Re: question"
    mime["Message-ID"] = "<reply-1@example.test>"
    mime["Date"] = "Mon, 23 Nov 2026 10:00:00 +0900"
    mime.set_content(plain, cte=plain_cte)
    mime.add_alternative(page, subtype="html", cte=html_cte)
    return mime.as_bytes(policy=policy.SMTP)


def test_an_iso_2022_jp_part_stays_iso_2022_jp_and_keeps_its_cp50220_characters() -> None:
    stamped = stamp(message(JIS_BODY), FOOTER, "mx.example.test", NOW)
    (part,) = parts(stamped.data)
    assert part.get_content_charset() == "iso-2022-jp"
    payload = part.get_payload(decode=True)
    assert payload.isascii()  # 7bit: valid ISO-2022-JP, no raw 8-bit bytes
    assert payload.decode("iso2022_jp", "replace").count(FOOTER) == 1
    assert text_of(part).startswith("①お世話になっております。")


def test_the_footer_goes_into_both_alternatives_in_their_own_transfer_encodings() -> None:
    stamped = stamp(alternative(), FOOTER, "mx.example.test", NOW)
    plain, page = parts(stamped.data)
    assert stamped.stamped == 2
    assert plain["Content-Transfer-Encoding"] == "quoted-printable"
    assert page["Content-Transfer-Encoding"] == "base64"
    assert text_of(plain).rstrip().endswith(FOOTER)
    html_text = text_of(page)
    assert html_text.index(f'<div class="{HTML_CLASS}">{FOOTER}</div>') < html_text.index("</body>")


def test_html_footers_are_escaped() -> None:
    stamped = stamp(alternative(), EN_FOOTER, "mx.example.test", NOW)
    _, page = parts(stamped.data)
    assert "Alex Smith &amp; co &lt;desk&gt;" in text_of(page)
    assert "<desk>" not in text_of(page)


def test_stamping_twice_changes_nothing() -> None:
    once = stamp(alternative(), FOOTER, "mx.example.test", NOW)
    twice = stamp(once.data, FOOTER, "mx.example.test", NOW)
    assert twice.stamped == 0
    assert twice.data == once.data


def test_a_footer_quoted_from_an_earlier_reply_does_not_count_as_stamped() -> None:
    quoted = f"はい、承知しました。\r\n\r\n> {FOOTER}\r\n> 以前のメール\r\n".encode("iso2022_jp")
    stamped = stamp(message(quoted), FOOTER, "mx.example.test", NOW)
    (part,) = parts(stamped.data)
    assert stamped.stamped == 1
    assert text_of(part).count(FOOTER) == 2


def test_a_footer_the_part_charset_cannot_hold_switches_that_part_to_utf8() -> None:
    stamped = stamp(message(b"Thanks, see below.\r\n", "text/plain; charset=us-ascii"), FOOTER, "mx", NOW)
    (part,) = parts(stamped.data)
    assert part.get_content_charset() == "utf-8"
    assert part["Content-Transfer-Encoding"] == "base64"
    assert text_of(part) == f"Thanks, see below.\r\n\r\n{FOOTER}\r\n"


def test_shift_jis_and_euc_jp_parts_keep_their_charsets() -> None:
    for charset, codec in (("Shift_JIS", "cp932"), ("EUC-JP", "euc_jp")):
        raw = message("お世話になっております。\r\n".encode(codec), f"text/plain; charset={charset}", "8bit")
        (part,) = parts(stamp(raw, FOOTER, "mx", NOW).data)
        assert part.get_content_charset() == charset.lower()
        assert part.get_payload(decode=True).decode(codec).endswith(FOOTER + "\r\n")


def test_signed_parts_are_left_untouched_and_reported() -> None:
    signed = (b'Content-Type: multipart/signed; protocol="application/pgp-signature"; boundary="S"\r\n'
              b"MIME-Version: 1.0\r\nFrom: yamada@example.test\r\nSubject: signed\r\n\r\n"
              b"--S\r\nContent-Type: text/plain\r\n\r\nsigned text\r\n--S\r\n"
              b"Content-Type: application/pgp-signature\r\n\r\n-----BEGIN PGP SIGNATURE-----\r\n--S--\r\n")
    stamped = stamp(signed, FOOTER, "mx", NOW)
    assert stamped.stamped == 0
    assert stamped.skipped == ("multipart/signed left untouched",)
    assert stamped.data.endswith(signed.partition(b"\r\n\r\n")[2])


def test_text_attachments_are_not_stamped() -> None:
    mime = email.message.EmailMessage()
    mime["From"] = "yamada@example.test"
    mime.set_content("body text\n")
    mime.add_attachment("log line\n", filename="server.log")
    stamped = stamp(mime.as_bytes(policy=policy.SMTP), EN_FOOTER, "mx", NOW)
    body, attachment = parts(stamped.data)
    assert EN_FOOTER in text_of(body)
    assert text_of(attachment) == "log line\r\n"


@pytest.mark.parametrize(("content_type", "extra"), [
    ('text/plain; charset=us-ascii; NAME="server.log"', ""),
    ("text/plain; charset=us-ascii", "Content-Disposition: inline; filename*=utf-8''%E3%83%AD%E3%82%B0.txt\r\n")],
    ids=["content-type-name", "rfc2231-filename"])
def test_an_inline_text_part_with_a_file_name_is_an_attachment_and_is_not_stamped(content_type, extra) -> None:
    stamped = stamp(message(b"log line\r\n", content_type=content_type, extra=extra), EN_FOOTER, "mx", NOW)
    assert stamped.stamped == 0
    assert stamped.data.endswith(b"\r\n\r\nlog line\r\n")


@pytest.mark.parametrize("content_type", [
    'multipart/alternative; boundary="b1=_x"', "Multipart/Alternative;\r\n\tBOUNDARY=b1=_x",
    "multipart/alternative; boundary=b1", 'multipart/alternative; boundary="b1 "',
    'multipart/alternative; boundary = "b1"', 'multipart/alternative; boundary="<b1>"',
    "multipart/alternative; boundary*=us-ascii''b1", 'multipart/alternative; boundary="b1"; charset=x',
    'multipart/alternative; boundary="b\\"1"'])
def test_a_boundary_is_read_as_the_email_package_reads_it_however_it_is_written(content_type) -> None:
    """A boundary in quotes or without, with a parameter beside it or RFC 2231's form: the parts
    the stamp finds are those the email package finds."""
    boundary = email.message_from_string(f"Content-Type: {content_type}\n\n").get_boundary()
    raw = message(f"--{boundary}\r\nContent-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n".encode(),
                  content_type=content_type)
    stamped = stamp(raw, EN_FOOTER, "mx", NOW)
    assert stamped.stamped == 1
    assert [text_of(part) for part in parts(stamped.data)] == [f"hello\r\n\r\n{EN_FOOTER}\r\n"]


def test_a_forwarded_message_is_not_stamped() -> None:
    forwarded = email.message.EmailMessage()
    forwarded["From"] = "customer@example.org"
    forwarded["Subject"] = "the error"
    forwarded.set_content("the customer's own words\n")
    mime = email.message.EmailMessage()
    mime["From"] = "yamada@example.test"
    mime.set_content("see the forwarded mail\n")
    mime.add_attachment(forwarded)
    stamped = stamp(mime.as_bytes(policy=policy.SMTP), EN_FOOTER, "mx", NOW)
    assert stamped.stamped == 1
    body, inner = parts(stamped.data)
    assert EN_FOOTER in text_of(body)
    assert text_of(inner) == "the customer's own words\r\n"


# A customer's message as triage delivered it to the owner's mailbox: our fields and tags on it.
DELIVERED = (b"X-Mailpipe-Customer: c@example.org; company=Acme; plan=enterprise; VIP\r\n"
             b"X-Mailpipe-Owner: yamada 03-1234-5678\r\nFrom: customer@example.org\r\n"
             b"Subject: [URGENT][#42] the error\r\nx-mailpipe-urgency: critical 31\r\n\r\nthe customer's words\r\n")


def forward(attached: bytes, boundary: str = "b", cte: str = "") -> bytes:
    """An agent's mail forwarding ``attached`` as a message/rfc822 attachment."""
    encoding = f"Content-Transfer-Encoding: {cte}\r\n" if cte else ""
    return (f"From: yamada@example.test\r\nSubject: Fwd: the error\r\nMIME-Version: 1.0\r\n"
            f'Content-Type: multipart/mixed; boundary="{boundary}"\r\n\r\n--{boundary}\r\n'
            f"Content-Type: text/plain\r\n\r\nsee below\r\n--{boundary}\r\nContent-Type: message/rfc822\r\n"
            f"{encoding}\r\n").encode() + attached + f"\r\n--{boundary}--\r\n".encode()


def test_a_customer_message_forwarded_as_an_attachment_leaves_without_what_triage_wrote_on_it() -> None:
    stamped = stamp(forward(DELIVERED), EN_FOOTER, "mx", NOW)
    assert b"x-mailpipe" not in stamped.data.lower() and b"enterprise" not in stamped.data
    _, inner = parts(stamped.data)
    assert inner["Subject"] == "[#42] the error"
    assert text_of(inner) == "the customer's words\r\n"


def test_a_copy_attached_inside_an_attached_forward_leaves_without_what_triage_wrote_on_it() -> None:
    colleagues_forward = forward(DELIVERED, boundary="inner")
    stamped = stamp(forward(colleagues_forward, boundary="outer"), EN_FOOTER, "mx", NOW)
    assert b"x-mailpipe" not in stamped.data.lower() and b"enterprise" not in stamped.data
    innermost = parts(stamped.data)[-1]
    assert innermost["Subject"] == "[#42] the error"
    assert text_of(innermost) == "the customer's words\r\n"


def test_a_copy_attached_base64_leaves_without_what_triage_wrote_on_it_and_stays_base64() -> None:
    stamped = stamp(forward(base64.encodebytes(DELIVERED), cte="base64"), EN_FOOTER, "mx", NOW)
    attachment = stamped.data[stamped.data.rindex(b"message/rfc822"):]
    assert b"Content-Transfer-Encoding: base64" in attachment
    copy = base64.b64decode(attachment.split(b"\r\n\r\n", 1)[1].split(b"--b--")[0])
    assert copy == b"Subject: [#42] the error\r\nFrom: customer@example.org\r\n\r\nthe customer's words\r\n"


def test_a_copy_attached_base64_without_its_padding_is_read_as_mail_clients_read_it() -> None:
    unpadded = base64.b64encode(DELIVERED).rstrip(b"=")
    stamped = stamp(forward(unpadded, cte="base64"), EN_FOOTER, "mx", NOW)
    attachment = stamped.data[stamped.data.rindex(b"message/rfc822"):]
    copy = base64.b64decode(attachment.split(b"\r\n\r\n", 1)[1].split(b"--b--")[0])
    assert b"x-mailpipe" not in copy.lower() and b"enterprise" not in copy


def test_a_copy_attached_quoted_printable_leaves_without_what_triage_wrote_on_it() -> None:
    stamped = stamp(forward(quopri.encodestring(DELIVERED), cte="quoted-printable"), EN_FOOTER, "mx", NOW)
    assert b"x-mailpipe" not in stamped.data.lower() and b"enterprise" not in stamped.data
    assert b"[#42] the error" in stamped.data and b"[URGENT]" not in stamped.data


def test_a_copy_attached_as_message_global_leaves_without_what_triage_wrote_on_it() -> None:
    raw = forward(DELIVERED).replace(b"Content-Type: message/rfc822", b"Content-Type: message/global")
    stamped = stamp(raw, EN_FOOTER, "mx", NOW)
    assert b"x-mailpipe" not in stamped.data.lower() and b"enterprise" not in stamped.data


def test_a_reply_nesting_attached_messages_deeper_than_any_forward_is_refused_with_a_reason() -> None:
    nested = DELIVERED
    for depth in range(25):
        nested = forward(nested, boundary=f"b{depth}")
    with pytest.raises(ValueError, match="nested more than 20 deep"):
        stamp(nested, EN_FOOTER, "mx", NOW)


def test_a_reply_nesting_body_parts_deeper_than_can_be_read_is_refused_with_a_reason() -> None:
    body = b"Content-Type: text/plain\r\n\r\nhello\r\n"
    for depth in range(1000):
        body = (f'Content-Type: multipart/mixed; boundary="m{depth}"\r\n\r\n--m{depth}\r\n'.encode() + body
                + f"\r\n--m{depth}--\r\n".encode())
    with pytest.raises(ValueError, match="nest too deep"):
        stamp(b"From: yamada@example.test\r\nMIME-Version: 1.0\r\n" + body, EN_FOOTER, "mx", NOW)


def test_a_message_attached_base64_that_triage_never_delivered_keeps_every_byte() -> None:
    notice = base64.encodebytes(b"DKIM-Signature: v=1; d=vendor.example\r\nSubject: [URGENT] tonight\r\n\r\nbody\r\n")
    assert notice in stamp(forward(notice, cte="base64"), EN_FOOTER, "mx", NOW).data


def test_a_forwarded_message_triage_never_delivered_keeps_every_byte_of_its_header() -> None:
    notice = b"DKIM-Signature: v=1; d=vendor.example\r\nSubject: [URGENT]  maintenance  tonight\r\n\r\nbody\r\n"
    assert notice in stamp(forward(notice), EN_FOOTER, "mx", NOW).data


def test_a_footer_with_a_wave_dash_is_added_once_however_often_the_reply_is_stamped() -> None:
    hours = "受付 9:00〜18:00（担当 山田）"  # WAVE DASH: ISO-2022-JP 0x2141, which CP50220 reads as ～
    once = stamp(message(JIS_BODY), hours, "mx", NOW)
    twice = stamp(once.data, hours, "mx", NOW)
    assert (once.stamped, twice.stamped) == (1, 0)
    assert twice.data == once.data


def test_what_the_stamp_does_not_change_keeps_its_bytes() -> None:
    references = "References: " + "\r\n ".join(f"<m{n}@example.org>" for n in range(12)) + "\r\n"
    mime = email.message.EmailMessage()
    mime["From"] = "yamada@example.test"
    mime.set_content("body text\n")
    mime.add_attachment(b"%PDF-1.4 binary\x00\xff", maintype="application", subtype="pdf", filename="a.pdf")
    raw = references.encode() + mime.as_bytes(policy=policy.SMTP)
    attachment = raw[raw.rindex(b"Content-Type: application/pdf"):]
    stamped = stamp(raw, EN_FOOTER, "mx", NOW)
    assert stamped.stamped == 1
    assert references.encode() in stamped.data
    assert stamped.data.endswith(attachment)


def test_internal_headers_and_urgency_tags_are_removed_and_the_case_token_stays() -> None:
    tagged = "=?UTF-8?B?" + base64.b64encode("Re: [URGENT][#42] 届きません".encode()).decode() + "?="
    raw = message(JIS_BODY, extra="X-Mailpipe-Case: 42\r\nX-MAILPIPE-Owner: yamada\r\n").replace(
        b"Subject: Re: question", f"Subject: {tagged}".encode())
    stamped = stamp(raw, FOOTER, "mx", NOW)
    assert b"x-mailpipe" not in stamped.data.lower()
    assert parse(stamped.data).subject == "Re: [#42] 届きません"


def test_message_id_and_date_are_added_when_missing_and_kept_when_present() -> None:
    bare = parse(stamp(message(JIS_BODY), FOOTER, "mx.example.test", NOW).data)
    assert bare.message_id.endswith("@mx.example.test")
    assert bare.date is not None and bare.date.timestamp() == NOW
    kept = stamp(alternative(), FOOTER, "mx.example.test", NOW).data
    assert kept.count(b"Message-ID: <reply-1@example.test>") == 1
    assert kept.count(b"Date: ") == 1


def test_templates_fill_known_names_and_leave_others() -> None:
    assert render("担当 {name}（{phone}）{unknown}", name="山田", phone="03") == "担当 山田（03）{unknown}"


def test_customer_subjects_lose_urgency_tags_only() -> None:
    assert customer_subject("Re: [HIGH][#7] refund") == "Re: [#7] refund"
