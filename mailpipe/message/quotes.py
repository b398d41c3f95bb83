"""The new text of a message, apart from the history it quotes, so old words do not re-trigger
rules. Cuts at the first attribution or separator line that clients put above quoted mail
("On … wrote:", "-----Original Message-----", Outlook's From:/Sent: block in a reply, Japanese clients'
「2024年1月5日(金) 10:00 山田 <x@example.jp>:」 — ending with the colon and naming an address (or
のメール/書きました), on its line or the next one a long attribution wraps onto, since
「2026年11月29日 07:10頃から、以下のエラーが返ります:」 is what happened, not who wrote before — and
「…さんは書きました:」), drops ">" lines (and the tails a client wrapped off them), and cuts the
signature (:mod:`mailpipe.message.signatures`).
Where "> " lines follow the attribution, what the sender wrote under them (bottom-posted) or
between them (answered inline) is new text too; under one unbroken quote below a top-posted reply
is only the client's signature or disclaimer. A salutation alone above the quote ("Hi team,",
「山田様」「お世話になっております。」) is not a top-posted reply: the answer is below.

A forward is different: "FYI, see below" is all a colleague writes, and the customer's problem
is what they forwarded. So below a forward marker ("---------- Forwarded message ---------",
Apple's "Begin forwarded message:" and 「転送されたメッセージ:」, Thunderbird's 「転送メッセージ」), or
below any separator when the subject says Fwd:/FW:/転送:, the forwarded text counts as new (its
header block dropped, the date on Outlook's "From: … Sent: <date>" line with it; words written on
a marker's own line stay), and is itself cut where it quotes older history.
"""

from __future__ import annotations

import re

from mailpipe.message.signatures import without_signature

_SEPARATORS = re.compile(
    r"""^[^\S\n]*(?:
        -{2,}\s*(?:Original\s+Message|Forwarded\s+message|元のメッセージ|転送(?:された)?メッセージ|Original)\s*-{2,}
      | (?:Begin\s+forwarded\s+message|転送されたメッセージ)\s*[:：]
      | _{10,}
      | (?:On|Le|Am|El)\s.{4,200}(?:wrote|écrit|schrieb|escribió)\s*:
      | \d{4}\s*年\s*\d{1,2}\s*月\s*\d{1,2}\s*日[^\n@]{0,300}
        (?:(?:\n[^\n@]{0,300})?@[^\n]{0,300} | (?:のメール|のメッセージ|書きました|wrote)[^\S\n]*)[:：][^\S\n]*$
      | \d{4}[/-]\d{1,2}[/-]\d{1,2}.{0,120}(?:wrote|書きました|のメール|のメッセージ)[^\S\n]*(?:[:：]|$)
      | .{1,120}(?:さんは書きました|wrote)\s*[:：]
      | (?P<fields>(?:From|差出人|送信者)\s*[:：].{1,200}\n\s*(?:Sent|Date|送信日時|日付)\s*[:：][^\n]*)
    )""",
    re.IGNORECASE | re.MULTILINE | re.VERBOSE,
)
# A salutation with nothing else on its line: "Hi, our account was hacked" is a top-posted reply.
# Names after it are capitalised (a few, joined by "and"), or one word before a comma ("Hello
# sam,"), and not a word a customer says something with ("Hi, thanks!", "Hey, urgent!").
# Japanese mail opens with whom it is for (a company or an organisation, a department, 山田様,
# ご担当者様, 御中) and who writes (お世話になっております。サンプルの山田です。), each on a line of
# its own; a line with a verb, a particle of a sentence or 件 says something (今月の請求が二重です。,
# ログインできないお客様, 二重請求の件です。). Missing a greeting loses the answer under the quote;
# taking a sentence for one only lets the client's trailer in, so names are read generously.
_GREETING_CHARS = 60
_LETTER = (r"A-Za-z0-9À-ÖØ-öø-ɏＡ-Ｚａ-ｚ０-９\u3005\u3041-\u3096\u309d\u309e\u30a0-\u30ff\u3231"
           r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f\U00020000-\U0002ffff")
_NAME = rf"[{_LETTER}・()（）&.'-]"
# A sentence, not a name: a particle, a verb ending (but 申します, ございます) or 件.
_SAYS = r"(?!.*(?:が|を|ない|(?<!申し)(?<!ござい)ます|ません|ている|でし|まし|宛|件|お願い|くださ|下さ))"
_ORGANISATION = (rf"(?:{_NAME}|\s){{0,30}}(?:株式会社|有限会社|合同会社|（株）|\(株\)|㈱|法人|大学|銀行|協会|病院|"
                 rf"事務所|学園|学校)(?:{_NAME}|\s){{0,30}}")
_DEPARTMENT = rf"(?:{_NAME}|\s){{0,30}}(?:部|課|室|係|センター|窓口|デスク|事務局|チーム|本部|支店|グループ)"
_PERSON = r"[A-Za-z\u3005\u30a0-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]{1,10}"
_SELF = (rf"(?:(?:{_NAME}|\s){{1,30}}の|{_ORGANISATION}[\s、]*|{_NAME}{{1,20}}[\s、]+)?{_PERSON}\s*"
         r"(?:です|と申します|でございます)[。]?")
# A name: an ASCII capital first, or any letter beyond ASCII (Łukasz, 山田); a word in capitals
# is shouted, not a name ("Hi Support, URGENT").
_CAPITALISED = r"(?![A-Z]{3,}\b)(?:[A-Z]|[^\W\d_\x00-\x7f])[\w.'-]*"
# A name with a title or an honorific on its line ("Ms Park,", "Tanaka-san,") opens a letter.
_NAME_WORD = r"[A-ZÀ-ÖØ-Þ\u0100-\u024f][A-Za-zÀ-ÖØ-öø-ɏ'-]*"
_ADDRESSEE = (rf"(?:(?:Mr|Mrs|Ms|Miss|Dr|Prof)\.?\s+{_NAME_WORD}(?:\s+{_NAME_WORD})?"
              rf"|{_NAME_WORD}(?:\s+{_NAME_WORD})?-(?:san|sama|sensei))\s*,")
# A bare name ("Sam,") is one only when it names whom the reply quotes ("On Mon, Sam Lee <…>
# wrote:"): "Confirmed,", "Kind Regards," and "Resolved," say something, and no list of such
# words is ever whole.
_ANY_NAME_WORD = r"[A-Za-zÀ-ÖØ-öø-ɏ][A-Za-zÀ-ÖØ-öø-ɏ'-]*"
_BARE_NAME = re.compile(rf"({_ANY_NAME_WORD}(?:\s+{_ANY_NAME_WORD})?)\s*,")
# A smiley after the salutation ("Hi Sam :)") is still only a greeting.
_SMILEY = r"(?:\s*(?::-?[)D]|\^\^|[\u2600-\u27bf\U0001f300-\U0001faff]))?"
_SALUTATION = (r"hi|hello|hey|dear|greetings|good\s+(?:morning|afternoon|evening|day)|morning|afternoon|evening"
               r"|hallo|bonjour|hola|ciao|guten\s+(?:morgen|tag)")
# The pleasantry that opens many English letters, on a line of its own or after the salutation.
_HOPE = (r"(?:i\s+)?(?:hope|trust)\s+(?:that\s+)?(?:this(?:\s+(?:e-?mail|mail|message|note))?\s+finds\s+you\s+well"
         r"|you(?:'re|’re|\s+are|\s+have\s+been)\s+(?:all\s+)?(?:doing\s+|keeping\s+)?(?:well|great|good)"
         r"|(?:all\s+is|you\s+are\s+all)\s+well(?:\s+with\s+you)?)(?:\s+today)?\s*[.!,]?")
_JA_OPENING = (r"(?:いつも|平素より|平素は)?(?:大変|格別に)?"
               r"(?:お世話になって(?:おり|い)ます|お世話になります|お世話様です)"
               r"|平素は(?:格別の|大変)?(?:お引き?立て|ご高配|ご愛顧|ご厚情)を(?:賜り|いただき)[^。\n]{0,20}(?:御礼|お礼)申し上げます"
               r"|お疲れ様です|お疲れさまです|おつかれさまです|はじめまして|初めまして|初めてご連絡(?:いた|致)します"
               r"|突然のご連絡(?:失礼|申し訳ございません)[^。]{0,6}|ご無沙汰しております|こんにちは|いつもありがとうございます")
_GREETING = re.compile(
    rf"""(?:
        (?i:{_SALUTATION})\s*,?
        (?!\s*(?i:thanks|thank|help|urgent|please|sorry|asap|ok|okay|yes|no)\b)
        (?:(?:,?\s+(?:(?i:all|team|there|everyone|folks|sir\s+or\s+madam|sir/madam|support|and|again)|&|@?{_CAPITALISED})){{0,5}}
             \s*[,.!:\-–—]?
           | \s+@?[a-z][\w.'-]*\s*,)
        {_SMILEY}
        (?:(?<=[,.!])\s+(?i:{_HOPE}))?
      | {_ADDRESSEE}
      | (?i:to\s+whom\s+it\s+may\s+concern)\s*[,:]?
      | (?i:{_HOPE})
      | (?:{_JA_OPENING})[。、]?\s*
        (?:{_SAYS}{_SELF})?
      | {_SAYS}(?:
            {_SELF}
          | (?:{_NAME}|\s){{0,30}}?(?:ご担当者?|担当者|皆|みな)?
            (?:様|さま|さん|御中|殿|各位|先生|部長|課長|社長|室長|所長|院長|校長)[、。,]?
          | {_ORGANISATION}
          | {_DEPARTMENT})
    )""",
    re.VERBOSE)
# "|" quotes too, but a line that also ends with one is a row of a table (pasted logs, Markdown).
_QUOTED_LINE = re.compile(r"^\s*(?:>|＞|\|(?!.*\|\s*$))")
# Clients wrap at 72 to 78 columns: a quoted line this wide (a Japanese character is two) may
# have lost its last words to the next line, and what it lost, put back, fits within 80.
_WRAPPED_WIDTH = 66
_LINE_WIDTH = 80
_SENTENCE_ENDS = (".", "?", "!", ":", "。", "？", "！", "：")
_WIDE = re.compile(r"[\u3000-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")
_FORWARD_MARKER = re.compile(r"Forwarded\s+message|Begin\s+forwarded|転送(?:された)?メッセージ", re.IGNORECASE)
_FORWARD_SUBJECT = re.compile(r"^\s*(?:fw|fwd|wg|転送)\s*[:：]", re.IGNORECASE)
# "Re:", "Fwd:" and their kind, after any tags a gateway or a desk put first ("[EXTERNAL] RE:",
# "[URGENT][#12] Re:", 【外部】RE:).
REPLY_PREFIX = re.compile(
    r"^\s*(?:(?:\[[^\]\n]{1,30}\]|【[^】\n]{1,20}】)\s*)*"
    r"(?:(?:re|fw|fwd|aw|wg|sv|vs|antw|回复|返信|転送|ＲＥ|Ｒｅ)\s*(?:\[\d+\])?\s*[:：]\s*)+",
    re.IGNORECASE)
_SUBJECT_FIELD = re.compile(r"^\s*(?:Subject|件名)\s*[:：][^\S\n]*(.*)$", re.IGNORECASE)
_FORWARDED_FIELD = re.compile(
    r"^\s*(?:From|Sent|Date|To|Cc|Subject|Reply-To|差出人|送信者|送信日時|日付|日時|宛先|件名)\s*[:：]", re.IGNORECASE)


def new_text(text: str, subject: str = "", answering: bool = True) -> str:
    """What the sender (or, for a forward, the person forwarded) wrote that is not history.
    ``answering``: the message replies to or forwards another (its subject or In-Reply-To says
    so). Only then is a bare From:/Date: block, with no marker line above it, the top of quoted
    history; in a new message it is the customer pasting the headers of the mail in question,
    and what follows it is still theirs."""
    match = next((found for found in _SEPARATORS.finditer(text) if answering or not found.group("fields")), None)
    head = without_signature(_unquoted(text[: match.start()] if match else text))
    if match is None:
        return head
    if not (_FORWARD_MARKER.search(match.group(0)) or _FORWARD_SUBJECT.match(subject)):
        below = _under_quote(text[match.end():], _top_posted(head, match.group(0)))
        if below is None:
            return head
        # The text without the attribution and the lines it quotes, read again as one, so that a
        # signature or footer under the sender's own lines is cut as it would be above the quote.
        return new_text(f"{text[: match.start()]}\n\n{below}", subject, answering)
    fields, rest = _fields_on_top(text[match.end():])
    # The forwarded message's own subject, from the block its client put on top, says whether it
    # answered another; without one, it is read as one that may.
    subject_of = next((found[1] for line in fields if (found := _SUBJECT_FIELD.match(line))), None)
    forwarded = new_text(rest, subject_of or "", subject_of is None or reply_subject(subject_of))
    return f"{head}\n{forwarded}".strip()


def reply_subject(subject: str) -> bool:
    """A subject that says it answers something ("Re:", "返信:", "Fwd:")."""
    return bool(REPLY_PREFIX.match(subject))


def _top_posted(head: str, attribution: str) -> bool:
    """Whether anything above the quote says more than a greeting; ``attribution`` is the line
    that introduces the quote, naming whom the reply answers."""
    quoted = set(_words(attribution))
    return any((stripped := line.strip()) and not _is_greeting(stripped, quoted) for line in head.splitlines())


def _is_greeting(line: str, quoted: set[str]) -> bool:
    """Only a short line is tried: the pattern's optional words and spaces backtrack on a long one.
    ``quoted``: the words of the attribution, where a bare name must appear."""
    if len(line) > _GREETING_CHARS:
        return False
    bare = _BARE_NAME.fullmatch(line)
    return _GREETING.fullmatch(line) is not None or (bare is not None and set(_words(bare[1])) <= quoted)


def _words(text: str) -> list[str]:
    return re.findall(r"\w+", text.casefold())


def _under_quote(below: str, top_posted: bool) -> str | None:
    """What the sender wrote under or between the "> " lines below a separator (the rest of its
    line first), or None where the separator quotes nothing with "> " (a pasted or Outlook-style
    history block, which runs to the end). Under one unbroken quote below a top-posted reply, what
    follows is the client's trailer (a signature, a disclaimer, a gateway's banner), not an answer."""
    first, _, rest = below.partition("\n")
    lines = [first, *_fields_on_top(rest)[1].splitlines()]  # Outlook's From:/Sent: block under its separator
    following = [line for line in lines[1:] if line.strip()]
    if not following or not _QUOTED_LINE.match(following[0]):
        return None
    marks = _quoted(lines)
    quoted = [i for i, mark in enumerate(marks) if mark]
    if top_posted and not any(lines[i].strip() and not marks[i] for i in range(quoted[0], quoted[-1])):
        lines = lines[:quoted[-1] + 1]
    return _unquoted("\n".join(lines))


def _unquoted(text: str) -> str:
    lines = text.splitlines()
    return "\n".join(line for line, mark in zip(lines, _quoted(lines), strict=True) if not mark).strip()


def _quoted(lines: list[str]) -> list[bool]:
    """Which lines are quoted history: the "> " lines, and the tail of a long quoted line that a
    client wrapped again without its "> " ("> …we need it" / "urgently." / "> …"), which would
    otherwise read as an answer between the quoted lines, the old emergency's words in it. A tail
    is followed by more quote, or ends the quote (a blank line or the end under it)."""
    marks = [bool(_QUOTED_LINE.match(line)) for line in lines]
    for i in range(1, len(lines)):
        ends_quote = i + 1 == len(lines) or marks[i + 1] or not lines[i + 1].strip()
        if not marks[i] and marks[i - 1] and ends_quote and _continues(lines[i - 1], lines[i]):
            marks[i] = True
    return marks


def _continues(quoted: str, line: str) -> bool:
    """``line`` reads as the rest of ``quoted``: that one was long enough to have been wrapped and
    stops mid-sentence; the two together (without the "> ") fit one line as clients write them;
    this one starts mid-sentence (in lower case, or in Japanese, where no case tells). An answer
    between quoted lines is seldom short enough to fit."""
    before, after = quoted.rstrip(), line.strip()
    if not after or before.endswith(_SENTENCE_ENDS) or _width(before) < _WRAPPED_WIDTH \
            or _width(before) + _width(after) - 1 > _LINE_WIDTH:
        return False
    return after[0].islower() or _WIDE.match(before[-1]) is not None


def _width(text: str) -> int:
    return len(text) + len(_WIDE.findall(text))


def _fields_on_top(forwarded: str) -> tuple[list[str], str]:
    """The From:/Date:/Subject: block a client puts on top of a forwarded message, and the rest."""
    lines = forwarded.lstrip("\n").splitlines()
    skipped = 0
    while skipped < len(lines) and (_FORWARDED_FIELD.match(lines[skipped]) or (skipped and lines[skipped][:1] in " \t"
                                                                             and lines[skipped].strip())):
        skipped += 1
    return lines[:skipped], "\n".join(lines[skipped:])
