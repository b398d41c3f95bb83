"""The signature under what a sender wrote, cut before rules and the model read the text.

Why: a signature is the same under every mail its sender writes (company, phone, "Sent from my
iPhone"), so it says nothing about this mail's urgency; the model learned from it anyway: phone
footers sit under thank-yous and emergencies alike, and a company name can contain a keyword.
Cut only what is surely a signature, since cutting a pasted log or the problem itself would be
far worse than keeping a footer:
- phone and webmail footers ("Sent from my iPhone", 「iPhoneから送信」) on the last lines;
- everything under the RFC 3676 delimiter "-- " (or "--"), when what follows is short;
- a short block at the end, under a line drawn of one repeated character (━━━, -----, ＝＝＝),
  that carries a phone number or a company's name: the Japanese business signature;
- before those, up to four last paragraphs when each is a legal footer in a notice's own words
  ("if you are not the intended recipient", "does not accept liability for", 「誤って本メールを
  受信された場合」) or the footer's "for urgent matters, please call …": a customer who writes
  of misdelivery or confidentiality says it in other words, and keeps them.
"""

from __future__ import annotations

import re

# The most lines a signature runs to below its delimiter; a longer tail is the mail itself.
_MAX_LINES = 10
# Only a device or a mail app's name: "Sent from our console: 0 messages" is the mail itself.
_APP = (r"(?:iphone|ipad|android|galaxy|xperia|pixel|blackberry|outlook|gmail|yahoo!?\s*(?:mail|メール)"
        r"|proton\s*mail|spark)")
_MOBILE = re.compile(
    rf"""^\s*(?:
        sent\s+from\s+my\s+[\w .'-]{{1,30}}
      | sent\s+(?:from|with|via)\s+{_APP}[\w .-]{{0,30}}
      | get\s+outlook\s+for\s+\w+
      | (?:{_APP}|携帯|スマートフォン|スマホ|ドコモ|docomo|au|softbank|ソフトバンク)[\w\s!]{{0,10}}から(?:の)?送信
    )\s*$""",
    re.IGNORECASE | re.VERBOSE,
)
_DELIMITER = re.compile(r"^--\s?$")
_DRAWN = re.compile(r"^\s*([-=＝━─_*＊~〜・■□◆◇])\1{3,}\s*$")
_SIGNED = re.compile(
    r"(?:tel|phone|fax|mobile|電話|携帯|ＴＥＬ)\s*[:：.]?\s*\+?[\d(（][\d\s()（）-]{6,}"
    r"|株式会社|有限会社|合同会社|\b(?:inc|ltd|llc|gmbh|corp)\b\.?",
    re.IGNORECASE,
)
# A web form's fields ("お問い合わせ内容: …") and sentences ("株式会社ABCの田中です。全件止まっています")
# sit between drawn lines too: a block with either is the mail, not a signature.
_LABEL = re.compile(r"^\s*([^:：]{1,24}?)\s*[:：]")
_CONTACT_LABEL = re.compile(
    r"^(?:tel|phone|fax|mobile|cell|e-?mail|mail|url|web|site|address|住所|電話|携帯|ＴＥＬ|ＦＡＸ|メール|ＵＲＬ)",
    re.IGNORECASE)
_SENTENCE = re.compile(r"[。？！?!]|です|ます|ください|please", re.IGNORECASE)
# Only a notice's own wording: customers write "sent to the wrong recipient", "our list is
# confidential", 「誤って送信されました」 about the very problem they report.
_FOOTER = re.compile(
    r"""\bif\s+you\s+(?:are|were)\s+not\s+the\s+(?:intended|named|addressed)\s+recipient
      | \bif\s+you\s+(?:have\s+)?received\s+(?:this|it)\b[^.]{0,40}\bin\s+error
      | \b(?:accepts?|assumes?)\s+no\s+(?:responsibility|liability)\s+for
      | \b(?:does|do)\s+not\s+accept\s+(?:any\s+)?(?:responsibility|liability)\s+for
      | \bauthori[sz]ed\s+and\s+regulated\s+by | \bregistered\s+in\s+england\b
      | (?:^|\n)\s*urgent\s+matters\s*:
      | \bfor\s+urgent\s+(?:matters|service\s+issues|enquiries|inquiries),?\s+please\s+call
      | 誤って[^。\n]{0,12}受信(?:された|した|なさった)(?:場合|方) | 機密情報が含まれ(?:ている|る)可能性
      | (?:一切の|いかなる)?責任を負(?:いません|いかねます|わない) | (?:このメール|本メール)は送信専用""",
    re.IGNORECASE | re.VERBOSE)
_FOOTER_PARAGRAPHS = 4  # the most a footer runs to; above them is the mail, whatever it says
_FOOTER_LINES = 12  # a longer paragraph is the mail, whatever it says


def without_signature(text: str) -> str:
    """The text above its signature; the text unchanged when no signature is certain."""
    lines = _without_footer(text.rstrip().splitlines())
    end = len(lines)
    while end and (not lines[end - 1].strip() or _MOBILE.match(lines[end - 1])):
        end -= 1
    lines = lines[:end]
    # From the last line up, the first delimiter or drawn line whose block below is a signature
    # wins: a log pasted between two drawn lines stays, and a framed block (a drawn line above
    # and below it) is cut at its upper line. Once more than a signature's lines lie below, no
    # line further up can head one: the walk stops, so a mail of many drawn lines costs one pass.
    first = next((index for index, line in enumerate(lines) if line.strip()), len(lines))
    below = 0
    for index in range(len(lines) - 1, first, -1):
        line = lines[index]
        if _DELIMITER.match(line) or (_DRAWN.match(line) and _is_signature(lines[index + 1:])):
            return "\n".join(_trimmed(lines[:index]))
        below += bool(line.strip())
        if below > _MAX_LINES:
            break
    return "\n".join(lines)


def _without_footer(lines: list[str]) -> list[str]:
    """The lines above the legal footer's paragraphs at the end; a text of one paragraph is kept.
    Looks at a few paragraphs at most: a hostile mail of many costs a few passes, not one each."""
    end = len(_trimmed(lines))
    first = next((index for index, line in enumerate(lines) if line.strip()), end)
    for _ in range(_FOOTER_PARAGRAPHS):
        start = end
        while start > first and lines[start - 1].strip():
            start -= 1
        if start <= first or end - start > _FOOTER_LINES or not _FOOTER.search("\n".join(lines[start:end])):
            break
        end = len(_trimmed(lines[:start]))
    return lines[:end]


def _is_signature(block: list[str]) -> bool:
    """A phone number or a company's name, and nothing a form or a sentence would have."""
    if not _SIGNED.search("\n".join(block)) or any(_SENTENCE.search(line) for line in block):
        return False
    labels = (_LABEL.match(line) for line in block)
    return all(_CONTACT_LABEL.match(label.group(1).strip()) for label in labels if label)


def _trimmed(lines: list[str]) -> list[str]:
    end = len(lines)
    while end and not lines[end - 1].strip():
        end -= 1
    return lines[:end]
