"""The new text of a reply, apart from the history it quotes, so old words do not re-trigger
rules. Cuts at the first attribution or separator line that clients put above quoted mail
("On … wrote:", "-----Original Message-----", Outlook's From:/Sent: block, Japanese clients'
「2024年1月5日(金) 10:00 山田 <x@example.jp>:」 and 「…さんは書きました:」), and drops ">" lines.
"""

from __future__ import annotations

import re

_SEPARATORS = re.compile(
    r"""^\s*(?:
        -{2,}\s*(?:Original\s+Message|Forwarded\s+message|元のメッセージ|転送されたメッセージ|Original)\s*-{2,}
      | _{10,}
      | (?:On|Le|Am|El)\s.{4,200}(?:wrote|écrit|schrieb|escribió)\s*:
      | \d{4}\s*年\s*\d{1,2}\s*月\s*\d{1,2}\s*日.{0,120}[:：]
      | \d{4}[/-]\d{1,2}[/-]\d{1,2}.{0,120}(?:wrote|書きました|のメール|のメッセージ)\s*[:：]?
      | .{1,120}(?:さんは書きました|wrote)\s*[:：]
      | (?:From|差出人|送信者)\s*[:：].{1,200}\n\s*(?:Sent|Date|送信日時|日付)\s*[:：]
    )""",
    re.IGNORECASE | re.MULTILINE | re.VERBOSE,
)
_QUOTED_LINE = re.compile(r"^\s*(?:>|＞|\|)")


def new_text(text: str) -> str:
    match = _SEPARATORS.search(text)
    head = text[: match.start()] if match else text
    kept = [line for line in head.splitlines() if not _QUOTED_LINE.match(line)]
    return "\n".join(kept).strip()
