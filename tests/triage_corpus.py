"""The labelled fixture set, built into real messages in the encodings Japanese mail uses, and
scored with the default rules: ``python -m tests.triage_corpus`` prints precision and recall."""

from __future__ import annotations

import base64
import quopri
import tomllib
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mailpipe.data import shipped
from mailpipe.message import parse
from mailpipe.triage import rules
from mailpipe.triage.context import Context
from mailpipe.triage.score import evaluate

LABELLED = Path(__file__).parent.parent / "rules" / "corpus" / "seed-labelled.toml"
HOLDOUT = Path(__file__).parent.parent / "rules" / "corpus" / "seed-holdout.toml"
FIXTURES = Path(__file__).parent / "fixtures" / "triage"
ASIDE = FIXTURES / "aside.toml"  # the corpus's held-aside fifth
# A Tuesday afternoon in Tokyo: inside business hours, so that rule stays quiet.
NOW = datetime(2026, 11, 24, 5, 0, tzinfo=UTC)


def cp50220(text: str) -> bytes:
    """ISO-2022-JP as Outlook writes it (CP50220): CP932 pairs mapped back to JIS with escapes."""
    out, two_byte = bytearray(), False
    for ch in text:
        code = ch.encode("cp932")
        if len(code) == 1 and code[0] < 0x80:
            if two_byte:
                out += b"\x1b(B"
                two_byte = False
            out += code
            continue
        if len(code) == 1:  # half-width katakana: CP50220 turns them into full-width
            code = __import__("unicodedata").normalize("NFKC", ch).encode("cp932")
        s1, s2 = code
        if not two_byte:
            out += b"\x1b$B"
            two_byte = True
        j1 = (s1 - (0x70 if s1 < 0xA0 else 0xB0)) * 2 - (1 if s2 < 0x9F else 0)
        j2 = s2 - (0x1F if s2 < 0x7F else 0x20) if s2 < 0x9F else s2 - 0x7E
        out += bytes((j1, j2))
    if two_byte:
        out += b"\x1b(B"
    return bytes(out)


def build(entry: dict[str, Any]) -> bytes:
    encoding, subject, body = entry["encoding"], entry["subject"], entry["body"].replace("\n", "\r\n")
    content_type, transfer = "text/plain; charset=utf-8", "8bit"
    if encoding == "iso-2022-jp":
        subject_field = "=?ISO-2022-JP?B?" + base64.b64encode(cp50220(subject)).decode() + "?="
        payload, content_type, transfer = cp50220(body), "text/plain; charset=ISO-2022-JP", "7bit"
    elif encoding in ("shift_jis", "euc-jp"):
        codec = "cp932" if encoding == "shift_jis" else "euc_jp"
        subject_field = f"=?{encoding.upper()}?B?" + base64.b64encode(subject.encode(codec)).decode() + "?="
        payload, content_type = body.encode(codec), f"text/plain; charset={encoding.upper()}"
    else:
        subject_field = "=?UTF-8?B?" + base64.b64encode(subject.encode()).decode() + "?="
        payload = body.encode()
        if encoding == "utf-8-base64":
            payload, transfer = base64.encodebytes(payload).replace(b"\n", b"\r\n"), "base64"
        elif encoding == "utf-8-qp":
            payload, transfer = quopri.encodestring(payload).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n"), \
                "quoted-printable"
        elif encoding == "html":
            content_type = "text/html; charset=utf-8"
        elif encoding == "us-ascii":
            content_type, transfer = "text/plain; charset=us-ascii", "7bit"
    sender = entry.get("sender", "customer@example.org")
    headers = [f"From: <{sender}>", "To: support@example.test", f"Subject: {subject_field}",
               "Message-ID: <fixture@example.org>", "MIME-Version: 1.0", f"Content-Type: {content_type}",
               f"Content-Transfer-Encoding: {transfer}"]
    headers += [f"{name}: {value}" for name, value in entry.get("headers", {}).items()]
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + payload + b"\r\n"


def entries(path: Path = LABELLED) -> list[dict[str, Any]]:
    return tomllib.loads(path.read_text("utf-8"))["mail"]


def score_all(path: Path = LABELLED, ruleset: rules.RuleSet | None = None) -> list[tuple[dict[str, Any], str, str]]:
    """(entry, expected level, predicted level) for every message of a labelled file."""
    ruleset = ruleset or rules.load(shipped("rules"))
    results = []
    for entry in entries(path):
        verdict = evaluate(ruleset, Context(parse(build(entry)), NOW))
        results.append((entry, entry["level"], verdict.level))
    return results


def precision_recall(results: list[tuple[dict[str, Any], str, str]]) -> dict[str, tuple[float, float, int]]:
    expected = Counter(e for _, e, _ in results)
    predicted = Counter(p for _, _, p in results)
    correct = Counter(e for _, e, p in results if e == p)
    return {level: (correct[level] / predicted[level] if predicted[level] else 0.0,
                    correct[level] / expected[level] if expected[level] else 0.0, expected[level])
            for level in rules.LEVELS}


def report(path: Path) -> None:
    scored = score_all(path)
    print(f"{path.name}: {len(scored)} messages, {sum(e == p for _, e, p in scored)} at the expected level")
    print(f"{'level':<9} {'precision':>9} {'recall':>7} {'n':>4}")
    for level, (precision, recall, count) in precision_recall(scored).items():
        print(f"{level:<9} {precision:>9.2f} {recall:>7.2f} {count:>4}")
    for entry, expected, predicted in scored:
        if expected != predicted:
            print(f"  {expected:>8} -> {predicted:<8} {entry['subject']}")


if __name__ == "__main__":
    report(LABELLED)
    report(HOLDOUT)
