"""Parsing that never fails: real corpora, mutated mail, and the encodings Japanese mail uses."""

from __future__ import annotations

import base64
import random
import sysconfig
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from lxml import etree

from mailpipe.message import decode_header, html, parse, quotes, reply_subject
from mailpipe.message.charsets import decode, decode_iso2022jp
from mailpipe.message.signatures import without_signature

FIXTURES = Path(__file__).parent / "fixtures"
RUBY_MAIL = sorted((FIXTURES / "ruby-mail").rglob("*.eml"))
CPYTHON_EMAIL = Path(sysconfig.get_paths()["stdlib"]) / "test" / "test_email" / "data"

# ① and ㈱ (NEC row 13) and ｶﾀ (half-width katakana) as CP50221 ISO-2022-JP writes them.
CP50221_SAMPLE = b"\x1b$B\x2d\x21\x2d\x6a\x1b(B \x1b(I\x36\x40\x1b(B"


def mail(body: bytes, content_type: str = "text/plain; charset=utf-8", headers: str = "",
         encoding: str = "8bit") -> bytes:
    return (f"From: =?UTF-8?B?5bGx55Sw?= <yamada@example.jp>\r\nTo: support@example.test\r\n"
            f"Subject: test\r\nMessage-ID: <m1@example.jp>\r\n{headers}MIME-Version: 1.0\r\n"
            f"Content-Type: {content_type}\r\nContent-Transfer-Encoding: {encoding}\r\n\r\n").encode() + body


def test_every_message_of_cpythons_email_corpus_parses() -> None:
    files = sorted(CPYTHON_EMAIL.iterdir())
    assert len(files) > 50, f"CPython's test_email corpus missing at {CPYTHON_EMAIL}: `make test` installs it"
    for path in files:
        parsed = parse(path.read_bytes())
        assert not any(d.startswith("unparseable") for d in parsed.defects), (path.name, parsed.defects)


def test_every_message_of_the_ruby_mail_corpus_parses_broken_ones_included() -> None:
    assert len(RUBY_MAIL) >= 100
    for path in RUBY_MAIL:
        parsed = parse(path.read_bytes())
        assert isinstance(parsed.text, str)
        assert not any(d.startswith("unparseable") for d in parsed.defects), (path.name, parsed.defects)


def _mutations(seed: int, count: int) -> list[bytes]:
    rng = random.Random(seed)
    sources = [p.read_bytes() for p in RUBY_MAIL[:40]] + [mail(CP50221_SAMPLE, "text/plain; charset=iso-2022-jp")]
    out = []
    for _ in range(count):
        data = bytearray(rng.choice(sources))
        for _ in range(rng.randint(1, 8)):
            action = rng.randrange(5)
            if action == 0 and data:
                del data[rng.randrange(len(data)):]  # truncated mid-transfer
            elif action == 1 and data:
                data[rng.randrange(len(data))] = rng.randrange(256)  # a flipped byte
            elif action == 2:
                junk = [b"\x1b$B", b"=?utf-8?B?@@@?=", b"\r\n--", b"Content-Type: multipart/mixed\r\n", b"\0", b"\xfe"]
                data[rng.randrange(len(data) + 1):0] = rng.choice(junk)
            elif action == 3 and data:
                start = rng.randrange(len(data))
                del data[start:start + rng.randint(1, 200)]
            else:
                data = data.replace(b"charset=", b"charset=x-bogus-", 1)
        out.append(bytes(data))
    return out


def test_a_thousand_mutated_messages_never_raise() -> None:
    for data in _mutations(seed=2026, count=1000):
        parsed = parse(data)
        assert isinstance(parsed.text, str) and isinstance(parsed.subject, str)


def test_iso_2022_jp_decodes_nec_special_characters_like_cp50221() -> None:
    assert decode(CP50221_SAMPLE, "iso-2022-jp") == "①㈱ ｶﾀ"


def test_iso_2022_jp_body_and_rfc2047_subject() -> None:
    subject = "=?ISO-2022-JP?B?" + base64.b64encode("至急：配信できません".encode("iso2022_jp")).decode() + "?="
    parsed = parse(mail("メールが届きません。\r\n".encode("iso2022_jp"), "text/plain; charset=ISO-2022-JP",
                        encoding="7bit").replace(b"Subject: test", f"Subject: {subject}".encode()))
    assert parsed.subject == "至急：配信できません"
    assert parsed.new_text == "メールが届きません。"
    assert parsed.language == "ja"


def test_shift_jis_is_read_as_cp932_so_nec_and_ibm_characters_survive() -> None:
    parsed = parse(mail("①㈱髙橋です。".encode("cp932"), "text/plain; charset=Shift_JIS"))
    assert parsed.text == "①㈱髙橋です。"


def test_euc_jp_body() -> None:
    assert parse(mail("請求が二重です".encode("euc_jp"), "text/plain; charset=EUC-JP")).text == "請求が二重です"


def test_an_undeclared_charset_is_detected() -> None:
    assert parse(mail("解約したいです".encode("cp932"), "text/plain")).text == "解約したいです"
    assert parse(mail("解約したいです".encode("euc_jp"), "text/plain")).text == "解約したいです"


def test_utf8_mislabelled_as_latin1_is_read_as_utf8() -> None:
    assert parse(mail("返金してください".encode(), "text/plain; charset=iso-8859-1")).text == "返金してください"


def test_latin1_stays_latin1() -> None:
    assert parse(mail("café crème".encode("latin-1"), "text/plain; charset=iso-8859-1")).text == "café crème"


def test_quoted_printable_and_base64_bodies() -> None:
    qp = parse(mail(b"=E8=87=B3=E6=80=A5", encoding="quoted-printable"))
    b64 = parse(mail(base64.b64encode("至急".encode()), encoding="base64"))
    assert qp.text == b64.text == "至急"


def test_raw_8bit_utf8_in_a_header_is_decoded() -> None:
    assert parse("Subject: ログインできない\r\n\r\nx".encode()).subject == "ログインできない"


def test_html_only_mail_becomes_text_without_markup_or_scripts() -> None:
    body = b"<html><style>p{color:red}</style><body><p>Refund&nbsp;please</p><script>x()</script></body></html>"
    parsed = parse(mail(body, "text/html; charset=utf-8"))
    assert parsed.text == "Refund please"


def test_html_table_cells_are_read_apart_and_rows_on_lines_of_their_own() -> None:
    body = ("<table><tr><th>日付</th><th>配信数</th></tr><tr><td>11/26</td><td>46,250</td><td>0件</td></tr>"
            "<tr><td>11/27<td>0</table>").encode()
    parsed = parse(mail(body, "text/html; charset=utf-8"))
    assert [line for line in parsed.text.splitlines() if line] == ["日付 配信数", "11/26 46,250 0件", "11/27 0"]


def test_text_plain_is_preferred_over_its_html_alternative() -> None:
    body = (b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nplain words\r\n"
            b"--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n<p>html words</p>\r\n--b--\r\n")
    assert parse(mail(body, 'multipart/alternative; boundary="b"')).text.strip() == "plain words"


def test_nested_multiparts_and_attachments() -> None:
    body = (b"--outer\r\nContent-Type: multipart/alternative; boundary=inner\r\n\r\n"
            b"--inner\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nsee attached\r\n--inner--\r\n"
            b"--outer\r\nContent-Type: application/pdf; name=\"invoice.pdf\"\r\n"
            b"Content-Disposition: attachment; filename=\"invoice.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\n"
            b"JVBERi0=\r\n--outer--\r\n")
    parsed = parse(mail(body, 'multipart/mixed; boundary="outer"'))
    assert parsed.text.strip() == "see attached"
    assert parsed.attachments == ("invoice.pdf",)


def _forward(note: bytes, forwarded: bytes) -> bytes:
    """A mail forwarded as an attachment (Outlook's and Thunderbird's "Forward as attachment")."""
    body = (b"--f\r\nContent-Type: text/plain\r\n\r\n" + note + b"\r\n"
            b"--f\r\nContent-Type: message/rfc822\r\n\r\n" + forwarded + b"--f--\r\n")
    return mail(body, 'multipart/mixed; boundary="f"')


def test_a_forwarded_message_is_text_but_not_new_text() -> None:
    parsed = parse(_forward(b"Please look at this.", b"Subject: old\r\nContent-Type: text/plain\r\n\r\n"
                                                      b"our service is down\r\n"))
    assert parsed.new_text == "Please look at this."
    assert "our service is down" in parsed.text


def test_triage_reads_a_message_forwarded_as_an_attachment_after_the_note_above_it() -> None:
    parsed = parse(_forward(b"FYI, see attached.", b"Subject: [DOWN] API\r\nContent-Type: text/plain\r\n\r\n"
                                                    b"Check is DOWN from 4/4 locations.\r\n"))
    assert parsed.read_text == "FYI, see attached.\n\nCheck is DOWN from 4/4 locations."


def test_an_attached_forward_is_read_without_the_history_it_quotes() -> None:
    inner = (b"Subject: Re: help\r\nContent-Type: text/plain\r\n\r\nStill broken!\r\n\r\n"
             b"On Mon, 5 Jan 2026 at 10:00, Support <support@example.test> wrote:\r\n> We fixed it.\r\n")
    parsed = parse(_forward(b"", inner))
    assert parsed.read_text.strip() == "Still broken!"
    assert "We fixed it." in parsed.text


def test_an_attached_forward_written_in_plain_text_and_html_is_read_once() -> None:
    inner = (b"Subject: alert\r\nContent-Type: multipart/alternative; boundary=a\r\n\r\n"
             b"--a\r\nContent-Type: text/plain\r\n\r\nAll sends failing\r\n"
             b"--a\r\nContent-Type: text/html\r\n\r\n<p>All sends failing</p>\r\n--a--\r\n")
    parsed = parse(_forward(b"see below", inner))
    assert parsed.read_text == "see below\n\nAll sends failing"
    assert parsed.text.count("All sends failing") == 1


def test_an_attached_forward_that_is_html_only_is_read_as_text() -> None:
    parsed = parse(_forward(b"FYI", b"Subject: alert\r\nContent-Type: text/html\r\n\r\n<p>Queue <b>stuck</b></p>\r\n"))
    assert parsed.read_text.split() == ["FYI", "Queue", "stuck"]


def test_the_copy_of_our_own_mail_a_bounce_returns_is_not_read_as_forwarded() -> None:
    body = (b"--b\r\nContent-Type: text/plain\r\n\r\nDelivery failed.\r\n"
            b"--b\r\nContent-Type: message/delivery-status\r\n\r\nReporting-MTA: dns; mx.example\r\n\r\n"
            b"Final-Recipient: rfc822; a@example.org\r\nAction: failed\r\nStatus: 5.1.1\r\n"
            b"--b\r\nContent-Type: message/rfc822\r\n\r\nSubject: Re: outage\r\n\r\nThe outage hit every customer.\r\n"
            b"--b--\r\n")
    parsed = parse(mail(body, 'multipart/report; report-type=delivery-status; boundary="b"'))
    assert parsed.read_text == "Delivery failed."
    assert "every customer" in parsed.text


def reply_text(reply: str) -> str:
    """The new text of ``reply`` sent as an answer (with In-Reply-To)."""
    return parse(mail(reply.encode(), headers="In-Reply-To: <m0@example.test>\r\n")).new_text


@pytest.mark.parametrize("subject", ["[EXTERNAL] RE: invoice", "[URGENT][#12] Re: invoice", "【外部】RE: 請求書",
                                     "回复: invoice"])
def test_a_reply_whose_subject_carries_tags_before_re_is_a_reply(subject: str) -> None:
    assert reply_subject(subject)


@pytest.mark.parametrize("reply", [
    "Still broken!\n\nOn Mon, 5 Jan 2026 at 10:00, Support <support@example.test> wrote:\n> We fixed it. Refund?",
    "Still broken!\n\n-----Original Message-----\nFrom: Support\nSent: Monday\n\nRefund?",
    "Still broken!\n\nFrom: Support <support@example.test>\nSent: Monday, January 5, 2026\nTo: me\n\nRefund?",
    "Still broken!\n\n2026年1月5日(月) 10:00 サポート <support@example.test>:\n> 返金しました",
    "Still broken!\n\nサポート さんは書きました:\n> 返金しました",
    "Still broken!\n> Refund?\n> 返金",
], ids=["gmail-en", "outlook-original", "outlook-headers", "gmail-ja", "thunderbird-ja", "bare-quotes"])
def test_quoted_history_is_not_new_text(reply: str) -> None:
    assert reply_text(reply) == "Still broken!"


@pytest.mark.parametrize("reply", [
    "On Mon, 5 Jan 2026 at 10:00, Support <support@example.test> wrote:\n> It is fixed now.\n\nStill broken!",
    "2026年1月5日(月) 10:00 サポート <support@example.test>:\n> 直りました。\n\nStill broken!\n\n-- \nYamada",
    "On Mon, Support <support@example.test> wrote:\n> Fixed?\n\nStill broken!\n\n> Anything else?\n\nRefund?",
    "-----Original Message-----\nFrom: Support\nSent: Monday\nSubject: RE: x\n\n> It is fixed now.\nStill broken!\n"
    "> Anything else?\nRefund?",
], ids=["bottom-posted", "bottom-posted-ja-with-signature", "inline", "inline-under-outlook-headers"])
def test_what_a_reply_writes_under_or_between_the_lines_it_quotes_is_new_text(reply: str) -> None:
    new_text = reply_text(reply)
    assert "Still broken!" in new_text
    assert "fixed" not in new_text.lower() and "直りました" not in new_text and "Yamada" not in new_text
    assert new_text.endswith("Refund?") == reply.endswith("Refund?")


@pytest.mark.parametrize("greeting", [
    "Hi team,", "Dear Support Team,\n", "Hello sam,", "Hi, Sam",
    "お世話になっております。", "山田様\nお世話になっております。",
    "株式会社メールパイプ\nサポートご担当者様\n\nお世話になっております。サンプルの山田です。",
    "㈱メールパイプ\nサポートご担当者様\n\nお世話になっております。\nサンプル株式会社 山田です。",
    "さくらインターネット株式会社\nカスタマーサポート部\n山田 太郎 様\n\nいつも大変お世話になっております。\n"
    "ひまわり保育園の佐藤と申します。",
    "Hi again,", "Hi Łukasz and team,", "To whom it may concern,", "Hi @Sam,",
    "Hi Sam,\n\nI hope this email finds you well.", "Hope you're doing well!", "Hi Sam, I hope you're well.",
    "Ms Park,", "Tanaka-san,", "Hi Sam :)", "平素より大変お世話になっております。",
    "株式会社メールパイプ 御中\n\n平素は格別のお引き立てを賜り、厚く御礼申し上げます。",
], ids=["hi", "dear", "lowercase-name", "comma-name", "ja", "ja-addressee", "ja-company-addressee-self",
        "ja-cp932-company", "ja-department-block-hiragana-names", "again", "non-ascii-name-and-team", "whom",
        "mention", "hope-finds-you-well", "hope-doing-well", "salutation-and-hope", "title-and-name",
        "name-san", "smiley", "ja-heiso", "ja-formal-thanks-for-patronage"])
def test_an_answer_under_the_quote_counts_when_only_a_greeting_stands_above_it(greeting: str) -> None:
    reply = (f"{greeting}\n\nOn Mon, Support <support@example.test> wrote:\n> It is resolved now.\n\n"
             "It is not: every send still bounces with 550.\n\nJoon")
    new_text = reply_text(reply)
    assert "every send still bounces" in new_text and "resolved now" not in new_text


@pytest.mark.parametrize("greeting", ["Sam,", "Sam Lee,", "sam,", "Anne-Marie,", "Sean O'Brien,"])
def test_a_bare_name_above_the_quote_is_a_greeting_when_it_names_whom_the_reply_quotes(greeting: str) -> None:
    reply = (f"{greeting}\n\nOn Mon, Sam Lee, Anne-Marie Dupont and Sean O'Brien <desk@example.test> wrote:\n"
             "> It is resolved now.\n\n"
             "It is not: every send still bounces with 550.\n\nJoon")
    new_text = reply_text(reply)
    assert "every send still bounces" in new_text and "resolved now" not in new_text


def test_a_shift_jis_reply_under_a_company_addressed_with_its_cp932_sign_is_read_under_the_quote() -> None:
    reply = ("㈱メールパイプ\nサポートご担当者様\n\n2026年11月30日(月) 10:00 サポート <support@example.test>:\n"
             "> 解決しました。\n\n全件エラーのままです。")
    new_text = parse(mail(reply.encode("cp932"), "text/plain; charset=shift_jis",
                          "In-Reply-To: <m0@example.test>\r\n")).new_text
    assert "全件エラーのままです" in new_text and "解決しました" not in new_text


def test_a_greeting_padded_with_half_a_million_spaces_is_read_in_one_pass() -> None:
    """Hostile input: the greeting pattern's optional words backtracked over the padding."""
    reply = "Hi Team" + " " * 500_000 + "- see below\n\nOn Mon, Support <support@example.test> wrote:\n> x\n\nJoon"
    assert reply_text(reply).endswith("see below")


@pytest.mark.parametrize("padding", ["\n", " \n", "\r\n", "\u3000\n"])
def test_a_reply_padded_with_a_hundred_thousand_blank_lines_is_read_in_one_pass(padding: str) -> None:
    """Hostile input: the quote separators' leading blanks backtracked over every run of blank
    lines from each line in it (8,000 lines took 5.6 s; this many, a quarter of an hour)."""
    reply = "All sends are failing" + padding * 100_000 + "since Monday."
    assert " ".join(reply_text(reply).split()) == "All sends are failing since Monday."


@pytest.mark.parametrize("markup", ["<a ", "<a b='", "<!--", "<x", "</", "<?"])
def test_html_with_a_hundred_thousand_unclosed_tags_is_read_in_one_pass(markup: str) -> None:
    """Hostile input: the standard library's html.parser (of Python 3.11.7) rescanned an unclosed
    construct from each one after it (40 KB of "<a " took 22 s)."""
    parsed = parse(mail(("<p>Refund please</p>" + markup * 100_000).encode(), "text/html; charset=utf-8"))
    assert parsed.text.startswith("Refund please")


def test_html_the_parser_refuses_is_read_with_its_tags_stripped(monkeypatch: pytest.MonkeyPatch) -> None:
    """libxml2 recovers from all markup tried; should it ever refuse some, the stage still reads it."""
    def refuse(*args: object) -> None:
        raise etree.ParserError("refused")
    monkeypatch.setattr(etree, "fromstring", refuse)
    assert " ".join(html.to_text("<p>Refund please</p><b>now").split()) == "Refund please now"


def test_html_nested_deeper_than_libxml2s_default_limit_keeps_the_text_after_it() -> None:
    body = "<div>" * 1_000 + "Refund please" + "</div>" * 1_000 + "<p>Our whole list is gone</p>"
    text = parse(mail(body.encode(), "text/html; charset=utf-8")).text
    assert " ".join(text.split()) == "Refund please Our whole list is gone"


@pytest.mark.parametrize("line", [
    "Hi, every send to Gmail is bouncing again", "Hi, thanks!", "Hey, urgent!", "解約したいのですが、担当の田中さん",
    "今月の請求が二重です。", "お世話になっております。昨日の障害の影響で全配信が停止中です。",
    "ログインできないお客様", "株式会社サンプル宛の配信が全て失敗しています", "二重請求の件です。",
    "Hi Support, URGENT", "Hi Team URGENT!", "Thanks,", "Unfortunately,", "Still broken,",
    "I hope you can fix this today.", "Confirmed,", "Many Thanks,", "Noted,", "全件エラーのままです,",
    "Sadly,", "Honestly,", "Update,", "Sorry Sam,", "Still Broken,", "Kind Regards,", "Resolved,", "Sam,",
])
def test_a_reply_that_says_something_on_its_greetings_line_is_top_posted(line: str) -> None:
    reply = (f"{line}\n\nOn Mon, Support <support@example.test> wrote:\n"
             "> It is resolved now.\n\nJoon Park\nOffice Manager, Lumenwave Audio")
    new_text = reply_text(reply)
    assert new_text == line


@pytest.mark.parametrize("reply", [
    "Thanks, all good now, no reply needed!\n\nOn Mon, Support <support@example.test> wrote:\n"
    "> We had a report that the whole list of 12,000 contacts disappeared and\nwas\n"
    "> found that an import had deleted it; we restored it from the backup of\ntoday.\n\nJoon",
    "解決しました。ありがとうございました。\n\n2026年1月5日(月) 10:00 サポート <support@example.test>:\n"
    "> 本日午前、全てのリストの登録者が消失していた件につきまして、復元しま\nした。\n> ご確認ください。",
], ids=["en", "ja"])
def test_the_tail_of_a_quoted_line_wrapped_again_without_its_marker_is_still_quoted(reply: str) -> None:
    new_text = reply_text(reply)
    assert new_text == reply.partition("\n")[0]


@pytest.mark.parametrize(("reply", "answers"), [
    ("Answers below.\n\nOn Mon, Sam Lee <sam@example.test> wrote:\n"
     "> - the exact bounce message you get, including the code at the start of it\nall 550 5.7.26\n"
     "> - roughly how many recipients are affected since this morning's DNS change\n"
     "all 40k of them, we are losing orders\n> Thanks, Sam\n\nalso billing charged us twice today, please refund",
     ["all 550 5.7.26", "all 40k of them", "charged us twice"]),
    ("On Mon, Support <support@example.test> wrote:\n"
     "> Which of your sending domains are affected, and since when did it start?\n"
     "all of them, since 9am\n> Anything else we should know about the bounce codes you are getting?\n"
     "every one is 550 5.7.26", ["all of them, since 9am", "every one is 550 5.7.26"]),
    ("山田様\n\n2026年1月5日(月) 10:00 サポート <support@example.test>:\n"
     "> ・影響を受けている送信ドメインと、不具合に気づかれたおおよその日時について\n"
     "全ドメインで今朝9時から全件送信できません\n> ・エラーコード（分かる範囲で構いません）\n550 5.7.26 です",
     ["全ドメインで今朝9時から全件送信できません", "550 5.7.26 です"]),
], ids=["checklist", "questions", "ja-checklist"])
def test_answers_between_quoted_lines_are_not_taken_for_wrapped_tails(reply: str, answers: list[str]) -> None:
    new_text = reply_text(reply)
    assert all(answer in new_text for answer in answers)


@pytest.mark.parametrize("trailer", [
    "-- \nJoon Park\nMarketing Manager, Lumenwave Audio",
    "Joon Park\nMarketing Manager, Lumenwave Audio",
    "This email is confidential. If you are not the intended recipient, notify the system manager: "
    "unauthorised access is a breach we report to the regulator.",
], ids=["signature", "signature-without-delimiter", "disclaimer"])
def test_what_a_client_puts_under_the_quote_of_a_top_posted_reply_is_not_new_text(trailer: str) -> None:
    reply = f"OK, thanks.\n\nOn Mon, Support <support@example.test> wrote:\n> We fixed it.\n\n{trailer}"
    assert reply_text(reply) == "OK, thanks."


@pytest.mark.parametrize("body", [
    "Our newsletter reaches nobody. One recipient sent us this:\n\nFrom: news@shop.example.jp\n"
    "Date: Mon, 30 Nov 2026 09:00:00 +0900\nSubject: Winter sale\n\nNone of our 30,000 subscribers got it.",
    "以下のメールが届きません。\n\n差出人: info@shop.example.jp\n日付: 2026/11/30 9:00\n件名: 冬のセール\n\n"
    "None of our 30,000 subscribers got it.",
], ids=["en", "ja"])
def test_headers_pasted_into_a_new_message_are_the_customers_words_not_quoted_history(body: str) -> None:
    new_text = parse(mail(body.encode())).new_text
    assert new_text.endswith("None of our 30,000 subscribers got it.")
    assert "Date: Mon" in new_text or "日付: 2026" in new_text


_PASTED = (b"Our newsletter reaches nobody. One recipient sent us this:\r\n\r\nFrom: news@shop.example.jp\r\n"
           b"Date: Mon, 30 Nov 2026 09:00:00 +0900\r\n\r\nNone of our 30,000 subscribers got it.\r\n")


def test_headers_pasted_into_a_new_message_forwarded_inline_stay_the_customers_words() -> None:
    forward = (b"FYI, see below.\r\n\r\n---------- Forwarded message ---------\r\nFrom: Ken <ken@shop.example>\r\n"
               b"Subject: Newsletter not arriving\r\n\r\n" + _PASTED)
    assert parse(mail(forward)).new_text.endswith("None of our 30,000 subscribers got it.")


def test_headers_pasted_into_a_new_message_forwarded_as_an_attachment_stay_the_customers_words() -> None:
    parsed = parse(_forward(b"FYI, see attached.", b"Subject: Newsletter not arriving\r\n"
                                                    b"Content-Type: text/plain\r\n\r\n" + _PASTED))
    assert parsed.read_text.endswith("None of our 30,000 subscribers got it.")


def test_a_reply_forwarded_as_an_attachment_is_still_cut_at_its_quoted_header_block() -> None:
    parsed = parse(_forward(b"FYI", b"Subject: RE: invoice\r\nContent-Type: text/plain\r\n\r\nStill wrong.\r\n\r\n"
                                     b"From: Support\r\nSent: Monday\r\n\r\nWe fixed the invoice.\r\n"))
    assert parsed.read_text == "FYI\n\nStill wrong."


@pytest.mark.parametrize("body", [
    "2026年11月29日 07:10頃から、全件エラーで戻ってきます。\n今も続いています。",
    "発生日時：2026年11月29日 07:10：全配信が停止\n今も続いています。",
    "Since this morning:\n| time  | delivered |\n| 07:00 | 0         |\nIt is still 0.",
], ids=["ja-date-and-time", "ja-date-in-a-form", "pipe-table"])
def test_what_happened_and_when_is_new_text_not_an_attribution(body: str) -> None:
    assert parse(mail(body.encode())).new_text == body


@pytest.mark.parametrize("history", [
    "2026年1月5日(月) 10:00 サポート <support@example.test>:\u3000\n> 返金しました",
    "2026年1月5日(月) 10:00 Example Corporation International Customer Support Desk (Tokyo Office) "
    "<customer-support-team-notifications@subdomain.example-corporation.co.jp>:\n> 返金しました",
    "2026年1月5日(月) 10:00 Yamada Taro <\ntaro.yamada@example.co.jp>:\n> 返金しました",
    "2026年1月5日(月) 10:00 株式会社サンプル カスタマー\nサポート窓口 <support@example.jp>:\n> 返金しました",
    "2026年1月5日 10:00、山田 太郎 <taro@example.jp>のメール:\n> 返金しました",
], ids=["fullwidth-space-after-colon", "long-name-and-address", "gmail-wrapped-before-address",
        "gmail-wrapped-in-name", "apple-ja"])
def test_a_japanese_attribution_that_is_long_wrapped_or_padded_still_cuts_history(history: str) -> None:
    assert parse(mail(f"Still broken!\n\n{history}".encode())).new_text == "Still broken!"
    text = f"Still broken!\r\n\r\n{history}".replace("\n", "\r\n").replace("\r\r", "\r")
    assert quotes.new_text(text) == "Still broken!"  # parse's fallback hands CRLF text on as it is


@pytest.mark.parametrize("body", [
    "2026年11月29日 07:10頃から、以下のエラーが返ります:\n550 5.7.1 rejected\n至急対応をお願いします。",
    "2026年11月29日から次の状態です：\n・全件エラー\n・管理画面も開けません",
], ids=["date-then-colon", "date-then-fullwidth-colon"])
def test_a_date_line_introducing_details_with_a_colon_is_new_text(body: str) -> None:
    assert parse(mail(body.encode())).new_text == body


@pytest.mark.parametrize(("subject", "body"), [
    ("Fwd: help", "FYI, see below\n\n---------- Forwarded message ---------\nFrom: Customer <c@example.com>\n"
                  "Date: Mon, 5 Jan 2026\nSubject: help\nTo: us\n\nEvery send bounces.\n\n"
                  "On Sun, Support wrote:\n> old"),
    ("FW: help", "FYI, see below\n\n-----Original Message-----\nFrom: Customer\nSent: Monday\nSubject: help\n\n"
                 "Every send bounces."),
    ("help", "FYI, see below\n\nBegin forwarded message:\n\nFrom: Customer <c@example.com>\nSubject: help\n\n"
             "Every send bounces."),
    ("転送: 至急", "FYI, see below\n\n-------- 転送されたメッセージ --------\n件名: 至急\n日付: 2026/01/05\n"
                 "差出人: 顧客 <c@example.jp>\n\nEvery send bounces.\n> 以前の文面"),
    ("FW: help", "FYI, see below\n\nFrom: Customer <c@example.com>\nSent: Saturday, November 28, 2026 9:00 AM\n"
                 "To: us\nSubject: help\n\nEvery send bounces."),
    ("FW: 至急", "FYI, see below\n\n差出人: 顧客 <c@example.jp>\n送信日時: 2026年11月28日 6:00\n宛先: 服部\n"
                 "件名: 至急\n\nEvery send bounces."),
    ("Fw: 至急", "FYI, see below\n\n-------- 転送メッセージ --------\n件名: 至急\n差出人: 顧客 <c@example.jp>\n\n"
                 "Every send bounces."),
    ("至急", "FYI, see below\n\n転送されたメッセージ:\n\n差出人: 顧客 <c@example.jp>\n件名: 至急\n\n"
           "Every send bounces."),
], ids=["gmail", "outlook", "apple", "thunderbird-ja", "outlook-headers", "outlook-headers-ja",
        "ja-short-marker", "apple-ja"])
def test_what_a_forward_forwards_is_new_text_without_its_header_block_or_older_quotes(subject: str, body: str
                                                                                     ) -> None:
    message = mail(body.encode()).replace(b"Subject: test", f"Subject: {subject}".encode())
    assert parse(message).new_text == "FYI, see below\nEvery send bounces."



@pytest.mark.parametrize("body", [
    "お世話になっております。\n転送されたメッセージ：すべて届いていません。至急ご確認ください。",
    "Hi,\nBegin forwarded message: none of our mail arrives since last night, every send bounces.",
], ids=["ja-marker-words", "apple-marker-words"])
def test_the_customers_words_on_a_forward_markers_line_are_new_text(body: str) -> None:
    """Only a forward's header block is dropped: words written on the marker's own line are the
    customer's (here the whole report of an outage), not the forwarded mail's Sent date."""
    words = body.split("\n")[1].split(":", 1)[-1].split("：", 1)[-1].strip()
    assert words in parse(mail(body.encode())).new_text


def test_a_line_that_starts_with_a_date_and_goes_on_about_that_days_mail_is_new_text() -> None:
    """「2026/11/28 のメールが…」 is the customer's report, not an attribution (those end the line,
    with or without a colon): none of it may be cut as quoted history."""
    body = "2026/11/28 のメールが全て届きません。\n至急対応をお願いします。"
    assert parse(mail(body.encode())).new_text == body


@pytest.mark.parametrize("body", [
    "Every send bounces.\n\nSent from my iPhone",
    "Every send bounces.\n\niPhoneから送信",
    "Every send bounces.\nAndroid携帯からの送信",
    "Every send bounces.\n\nGet Outlook for Android",
    "Every send bounces.\n-- \nJane Doe\nAcme Inc.\n+1 555 0100",
    "Every send bounces.\n━━━━━━━━━━\n株式会社ABC 山田 太郎\nTEL: 03-1234-5678\n━━━━━━━━━━",
    "Every send bounces.\n----------------\nYamada Taro | ABC Co., Ltd.\nwww.abc.example.jp",
], ids=["iphone", "iphone-ja", "android-ja", "outlook-app", "rfc3676", "framed-ja", "drawn-en"])
def test_a_signature_is_not_new_text(body: str) -> None:
    assert parse(mail(body.encode())).new_text == "Every send bounces."


@pytest.mark.parametrize("footer", [
    "URGENT MATTERS: for urgent service issues please call the IT Service Desk on 0161 496 0900.\n\n"
    "This email and any attachments are confidential and may be privileged. If you are not the intended\n"
    "recipient, delete it. Acme Mutual does not accept liability for any loss arising from this email.",
    "本メールは機密情報を含みます。誤って受信された場合は削除してください。",
], ids=["en", "ja"])
def test_a_legal_footer_under_the_mail_is_not_new_text(footer: str) -> None:
    assert parse(mail(f"Could you tell us the pricing?\n\nKind regards,\nJane\n\n{footer}".encode())).new_text == \
        "Could you tell us the pricing?\n\nKind regards,\nJane"


@pytest.mark.parametrize("body", [
    "This is confidential and urgent: every list in our account is gone.",
    "Every list is gone.\n\nPlease keep this confidential for now.",
    "Hi,\n\nYour system sends our password-reset mails to the wrong customers instead of the intended recipient.",
    "お世話になっております。\n\n顧客情報を含むメールが誤って送信されました。至急対応してください。",
    "お世話になっております。\n\n第三者への転送設定が勝手に追加されていました。乗っ取りの可能性があります。",
], ids=["one-paragraph", "keep-confidential", "intended-recipient", "sent-in-error-ja", "forwarding-ja"])
def test_a_mail_that_speaks_of_confidentiality_or_misdelivery_in_its_own_words_is_kept(body: str) -> None:
    assert parse(mail(body.encode())).new_text == body


def test_a_mail_of_many_footer_paragraphs_is_read_in_one_walk_up() -> None:
    """Hostile input: every paragraph a footer. Cutting one at a time by copying was quadratic."""
    body = "hi\n\n" + "本メールは送信専用です。\n\n" * 100_000
    assert without_signature(body).startswith("hi\n\n本メールは送信専用です。")


def test_a_mail_of_many_phone_footers_is_read_in_one_walk_up() -> None:
    """Hostile input: dropping the footers one copy at a time was quadratic."""
    assert without_signature("Every send bounces.\n" + "Sent from my iPhone\n" * 200_000) == "Every send bounces."


def test_a_log_pasted_between_drawn_lines_stays_new_text_above_the_signature() -> None:
    body = "全件エラーです。\n----------\n550 5.7.26 unauthenticated\n----------\n株式会社ABC 山田\nTEL 03-1234-5678"
    assert parse(mail(body.encode())).new_text == "全件エラーです。\n----------\n550 5.7.26 unauthenticated"



@pytest.mark.parametrize("body", [
    "以下の内容でお問い合わせがありました。\n----------\n会社名: 株式会社ABC\n電話番号: 03-1234-5678\n"
    "お問い合わせ内容: 配信が全件止まっています\n----------",
    "お世話になっております。\n━━━━━━━━\n株式会社ABCの田中です。全会員に誤配信してしまいました。",
], ids=["web-form", "sentence"])
def test_a_form_or_a_sentence_under_a_drawn_line_is_not_taken_for_a_signature(body: str) -> None:
    assert parse(mail(body.encode())).new_text == body

@pytest.mark.parametrize("body", ["Nothing arrives.\nSent from our console: 0 messages since Monday",
                                  "届きません。\n昨日の配信を管理画面から送信"])
def test_a_last_line_that_names_no_phone_or_mail_app_is_kept(body: str) -> None:
    assert parse(mail(body.encode())).new_text == body


def test_a_long_tail_under_a_drawn_line_is_the_mail_itself() -> None:
    body = "Details:\n----------\n" + "\n".join(f"line {n} of the report, Acme Inc." for n in range(12))
    assert parse(mail(body.encode())).new_text == body


def test_a_mail_of_many_drawn_lines_is_kept_whole_in_one_walk_up() -> None:
    """Hostile input: 200,000 drawn lines. Trying each as a signature's head would take minutes."""
    body = "Details:\n" + "-----\n" * 200_000 + "end of the table"
    assert without_signature(body) == body


def test_thread_keys() -> None:
    parsed = parse(mail(b"x", headers="In-Reply-To: <a@example.test>\r\nReferences: <r1@x> <a@example.test>\r\n")
                   .replace(b"Subject: test", "Subject: Re: 返信: [#123] ログインできません".encode()))
    assert parsed.message_id == "m1@example.jp"
    assert parsed.in_reply_to == ("a@example.test",)
    assert parsed.references == ("r1@x", "a@example.test")
    assert parsed.case_token == 123
    assert parsed.base_subject == "ログインできません"


def test_sender_name_and_address_are_decoded() -> None:
    parsed = parse(mail(b"x"))
    assert (parsed.sender_name, parsed.sender) == ("山田", "yamada@example.jp")


def test_a_malformed_encoded_word_does_not_break_the_rest_of_the_header() -> None:
    assert decode_header("=?utf-8?B?@@@?= tail") == "tail"
    assert decode_header("=?x-unknown?Q?caf=E9?= ok") == "café ok"


def test_blanks_between_encoded_words_are_dropped_and_blanks_beside_plain_words_kept() -> None:
    assert decode_header("=?utf-8?b?5oCl?= =?utf-8?Q?_x?=\r\n =?utf-8?b?5oCl?=  tail") == "急 x急  tail"


def test_a_subject_of_a_quarter_million_encoded_words_is_read_in_one_pass() -> None:
    """Hostile input: the standard library reads a line's encoded words with list.pop(0), so a
    header of many on one line took time in the square of their number (hours at the size limit)."""
    assert decode_header("=?utf-8?b?5oCl?= " * 250_000) == "急" * 250_000


def test_a_message_without_headers_or_body_separator_still_yields_text() -> None:
    assert "just words" in parse(b"just words without any header").text


def test_parsing_large_mail_is_bounded() -> None:
    parsed = parse(mail(b"x" * (3 * 1024 * 1024)))
    assert len(parsed.text) <= 1_000_000


def test_thread_ids_put_in_reply_to_first_then_references_newest_first_without_repeats() -> None:
    parsed = parse(b"From: a@example.org\r\nIn-Reply-To: <c@x>\r\nReferences: <a@x> <b@x> <c@x>\r\n\r\nHi\r\n")
    assert parsed.thread_ids == ("c@x", "b@x", "a@x")


def byte_by_byte(data: bytes) -> str:
    """The ISO-2022-JP decoder as first written, one byte at a time: the reference the faster
    one must agree with on every input."""
    out, mode, shifted, i = bytearray(), "ascii", False, 0
    while i < len(data):
        byte = data[i]
        if byte == 0x1B:
            seq = data[i + 1:i + 3]
            switch = {b"$B": "jis", b"$@": "jis", b"(B": "ascii", b"(J": "ascii", b"(H": "ascii", b"(I": "kana"}
            if seq in switch:
                mode, i = switch[seq], i + 3
                continue
            if data[i + 1:i + 4] == b"$(D":
                mode, i = "jisx0212", i + 4
                continue
        if byte in (0x0E, 0x0F):
            shifted, i = byte == 0x0E, i + 1
        elif byte in (0x0A, 0x0D):
            out.append(byte)
            i += 1
        elif shifted or mode == "kana":
            out.append(byte | 0x80 if 0x21 <= byte <= 0x5F else byte)
            i += 1
        elif mode in ("jis", "jisx0212") and i + 1 < len(data) and 0x21 <= byte <= 0x7E and 0x21 <= data[i + 1] <= 0x7E:
            j1, j2 = byte, data[i + 1]
            s2 = j2 + (0x1F if j1 % 2 else 0x7E)
            sjis = bytes(((j1 + 1) // 2 + (0x70 if j1 <= 0x5E else 0xB0), s2 + 1 if j1 % 2 and s2 >= 0x7F else s2))
            out.extend(sjis if mode == "jis" else "〓".encode("cp932"))
            i += 2
        else:
            out.append(byte)
            i += 1
    return bytes(out).decode("cp932", errors="replace")


ISO_2022_JP_PIECES = st.sampled_from([b"\x1b$B", b"\x1b$@", b"\x1b(B", b"\x1b(J", b"\x1b(H", b"\x1b(I", b"\x1b$(D",
                                      b"\x1b$", b"\x1b(", b"\x1b", b"\x0e", b"\x0f", b"\r\n", b"\n", b" ", b"\x7f",
                                      b"\xff", b"\x21", b"\x2d\x21", b"$*@$", b"\x7e\x7e", b"A"])


@settings(derandomize=True, deadline=None, max_examples=2000, database=None)
@given(st.lists(st.one_of(ISO_2022_JP_PIECES, st.binary(max_size=6)), max_size=40).map(b"".join))
def test_iso_2022_jp_decodes_as_the_byte_by_byte_decoder_did(data: bytes) -> None:
    assert decode_iso2022jp(data) == byte_by_byte(data)


def test_iso_2022_jp_in_the_ruby_mail_corpus_decodes_as_the_byte_by_byte_decoder_did() -> None:
    samples = [raw for raw in (path.read_bytes() for path in RUBY_MAIL) if b"\x1b" in raw]
    assert samples
    for raw in samples:
        assert decode_iso2022jp(raw) == byte_by_byte(raw)


def test_every_jis_x_0208_pair_decodes_as_the_byte_by_byte_decoder_did() -> None:
    pairs = bytes(byte for j1 in range(0x21, 0x7F) for j2 in range(0x21, 0x7F) for byte in (j1, j2))
    for data in (b"\x1b$B" + pairs, b"\x1b$B" + pairs[:-1], b"\x1b$B" + pairs[:99] + b" " + pairs[99:200]):
        assert decode_iso2022jp(data) == byte_by_byte(data)
