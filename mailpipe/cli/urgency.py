"""``mailpipe rules eval`` and ``mailpipe learn``: how good urgency is, and teaching it.

``rules eval`` prints, for labelled mail, the figures a desk cares about and per-level
precision, recall and a confusion table for the rules without the model, the model alone and
both together. Without files it judges the training corpus by k-fold cross-validation; with
files (the held-aside fifth, a desk's own labelled mail) a model trained on the corpus judges
them. ``learn`` records a lead's correction of cases by number, or adds saved messages to the
desk's corpus directory, and says how to make the daemon retrain (a reload).
"""

from __future__ import annotations

import argparse
import re
import time
from datetime import UTC, datetime
from pathlib import Path

from mailpipe import config as configuration
from mailpipe.cli.common import Commands, complain, json_line, opened_store
from mailpipe.deliver.headers import received
from mailpipe.desk.cases import CASE_NUMBER
from mailpipe.triage import corpus, evaluation
from mailpipe.triage import load as triage_load
from mailpipe.triage.conditions import LEVELS
from mailpipe.triage.model import clipped

# What the command line takes for a case number rather than a file (one too long is no case).
_DIGITS = re.compile(r"[0-9]+")
# Scored as if on a Tuesday afternoon in Tokyo: business hours, so that rule stays quiet.
_EVALUATED_AT = datetime(2026, 11, 24, 5, 0, tzinfo=UTC)


def add_eval(actions: Commands, common: argparse.ArgumentParser) -> None:
    evaluate = actions.add_parser(
        "eval", parents=[common], help="precision and recall of rules, model and both on labelled mail",
        description="Without FILE: the training corpus, by k-fold cross-validation. With FILE (TOML with "
                    "[[mail]] level, subject, body): a model trained on the corpus judges them.",
        epilog="example: mailpipe rules eval tests/fixtures/triage/aside.toml --json")
    evaluate.add_argument("files", nargs="*", type=Path, metavar="LABELLED", help="labelled mail (corpus format)")
    evaluate.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    evaluate.add_argument("--json", action="store_true", help="one JSON object with every figure")
    evaluate.set_defaults(run=_eval)


def _eval(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    ruleset = triage_load.ruleset(loaded.triage)
    training = corpus.entries(corpus.files(loaded.triage.corpus_paths))
    judged = corpus.entries(args.files) if args.files else None
    scores = evaluation.assess(ruleset, training, judged, max(2, args.folds), _EVALUATED_AT)
    if args.json:
        json_line({mode: found.as_dict() for mode, found in scores.items()})
        return 0
    what = ", ".join(map(str, args.files)) if args.files else f"the training corpus, {args.folds}-fold"
    print(f"{scores['both'].summary()['messages']} labelled messages ({what})\n")
    print(f"{'':<10}{'critical at high+':>18}{'urgent recall':>15}{'precision':>11}{'low promoted':>14}"
          f"{'exact':>7}")
    for mode, found in scores.items():
        s = found.summary()
        print(f"{mode:<10}{s['critical_at_high_or_above']:>12}/{s['critical']:<5}{s['urgent_recall']:>15.2f}"
              f"{s['urgent_precision']:>11.2f}{s['low_promoted']:>14}{s['exact']:>7.2f}")
    for mode, found in scores.items():
        print(f"\n{mode}: level     precision recall     n   confusion (rows: labelled, columns: given)")
        confusion = found.confusion()
        for level, figures in found.per_level().items():
            row = " ".join(f"{confusion[level][given]:>4}" for given in LEVELS)
            print(f"  {level:<14}{figures['precision']:>9.2f}{figures['recall']:>7.2f}{figures['count']:>6}   {row}")
    return 0


def learn(commands: Commands, common: argparse.ArgumentParser) -> None:
    command = commands.add_parser(
        "learn", parents=[common], help="correct the urgency of cases, or teach saved messages",
        description="CASE: the case's level becomes LEVEL (kept in its history, learned from at the "
                    "daemon's next training; mailpipe_triage_corrections_total counts only those agents mail). "
                    "FILE: the message (saved from a mailbox) is added to the desk's corpus directory with "
                    "LEVEL. Agents do the same by mail: forward to urgency+LEVEL@.",
        epilog="examples: mailpipe learn --level critical 42     mailpipe learn --level low saved/*.eml")
    command.add_argument("--level", required=True, choices=LEVELS)
    command.add_argument("items", nargs="+", metavar="CASE-ID|FILE")
    command.add_argument("--author", default="lead", help="who corrects (default: lead)")
    command.set_defaults(run=_learn)


def _learn(args: argparse.Namespace) -> int:
    loaded = configuration.load(args.config)
    cases = [item for item in args.items if _DIGITS.fullmatch(item)]
    files = [Path(item) for item in args.items if not _DIGITS.fullmatch(item)]
    failed = 0
    if cases:
        with opened_store(loaded) as store:
            for case in cases:
                correction = store.correct_level(int(case), args.level, args.author, time.time()) \
                    if CASE_NUMBER.fullmatch(case) else None
                if correction is None:
                    complain(f"no case #{case}")
                    failed += 1
                    continue
                print(f"case #{case}: {correction.from_level} -> {correction.to_level} (by {correction.author}"
                      f"{'' if correction.recorded else ', already recorded'})")
    if files:
        failed += _teach(files, args.level, Path(loaded.triage.corpus_overrides))
    print("the daemon learns from this at its next training: systemctl reload mailpipe")
    return 1 if failed else 0


def _teach(files: list[Path], level: str, directory: Path) -> int:
    """Saved messages become entries of ``learned.toml`` in the desk's corpus directory; a file
    that is no message (empty, binary, no text) is refused by name, and none is added."""
    entries = []
    for path in files:
        data = path.read_bytes()
        parsed = received(data)
        if b"\0" in data or not (parsed.subject.strip() or parsed.read_text.strip()):
            complain(f"{path}: not a mail message with text to learn from (saved as .eml from a mail client?);"
                     " nothing added")
            return 1
        entries.append(f"[[mail]]\nlevel = {_toml(level)}\nsubject = {_toml(parsed.subject)}\n"
                       f"body = {_toml(clipped(parsed.read_text))}\nnote = {_toml(f'learned from {path.name}')}\n")
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / "learned.toml"
    with target.open("a", encoding="utf-8") as out:
        out.write("\n".join(entries) + "\n")
    print(f"{len(entries)} messages added to {target} as {level}")
    return 0


def _toml(text: str) -> str:
    """A TOML basic string: every character that needs it escaped."""
    escaped = "".join(f"\\u{ord(c):04x}" if c < " " or c in '"\\\x7f' else c for c in text)
    return f'"{escaped}"'


EXAMPLES = {
    "rules eval": ("mailpipe rules eval", "mailpipe rules eval tests/fixtures/triage/aside.toml",
                   "mailpipe rules eval /etc/mailpipe/corpus.d/*.toml --folds 10 --json"),
    "learn": ("mailpipe learn --level critical 42", "mailpipe learn --level low --author sato 17 18",
              "mailpipe learn --level high saved/*.eml   # into triage.corpus_overrides, for the next training"),
}
