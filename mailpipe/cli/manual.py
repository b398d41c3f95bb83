"""``mailpipe help`` and mailpipe(8): the help of every command and the manual page, from one source.

Each command family declares its ``EXAMPLES`` beside its commands (``{"queue list": (...)}``);
``attach`` puts them under each command's ``--help``, and ``man_page`` writes the same parser
tree — descriptions, arguments, examples — as roff for ``man 8 mailpipe`` (``make install``
ships it). A command without examples is a bug that the tests catch (``missing_examples``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime

from mailpipe.cli.common import Commands

_INTRO = """mailpipe accepts a support desk's mail over SMTP, triages it by rules and hands each message to
one owner; agents' replies leave stamped, DKIM-signed and watched by provider. The commands work
on the daemon's state with or without a running daemon: run them as the daemon's user with its
config, runuser -u mailpipe -- mailpipe COMMAND, from any directory."""

_SECTIONS = (
    ("FILES", "/etc/mailpipe/mailpipe.toml: the config, merged over the embedded defaults "
              "(mailpipe check-config). /etc/mailpipe/dkim/: DKIM keys, owned by mailpipe, mode 0600. "
              "/var/lib/mailpipe/: the state (spool/, store.sqlite, mailboxes/) of the installed unit. "
              "/opt/mailpipe/: the program's virtual environment, where the unit's ExecStart points."),
    ("STATE", "Every command finds the state as the daemon does: state_directory in the config; "
              "$STATE_DIRECTORY (set by systemd for the service); /var/lib/mailpipe when the config is "
              "the installed /etc/mailpipe/mailpipe.toml; ./var for the quick start. A command that "
              "finds nothing says where it looked and creates nothing."),
    ("EXIT STATUS", "0 success, 1 failure or not found, 2 usage, 141 when the reader of the output "
                    "went away (a closed pipe)."),
    ("SEE ALSO", "systemctl(1), journalctl(1), postqueue(1), postsuper(1), "
                 "/usr/local/share/doc/mailpipe/README.md"),
)


def walk(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """Every command that runs something, as ("queue list", its parser), in ``--help`` order.
    A command without a description gets its one-line help as one, for ``--help`` and the manual."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help for choice in action._choices_actions}
            for name, sub in action.choices.items():
                if sub.description is None and helps.get(name):
                    sub.description = helps[name][0].upper() + helps[name][1:] + "."
                yield from walk(sub, (*path, name))
    if path and "run" in parser._defaults:
        yield " ".join(path), parser


def attach(parser: argparse.ArgumentParser, examples: Mapping[str, Sequence[str]]) -> None:
    for name, command in walk(parser):
        if name in examples:
            command.formatter_class = argparse.RawDescriptionHelpFormatter
            command.epilog = "examples:\n" + "\n".join(f"  {line}" for line in examples[name])
            command.examples = tuple(examples[name])  # type: ignore[attr-defined]


def missing_examples(parser: argparse.ArgumentParser) -> list[str]:
    return [name for name, command in walk(parser) if not getattr(command, "examples", ())]


def help_command(commands: Commands, common: argparse.ArgumentParser) -> None:
    helping = commands.add_parser("help", help="help on a command, or the whole manual page (--man)")
    helping.add_argument("command", nargs="*", metavar="COMMAND", help="e.g. queue list")
    helping.add_argument("--man", action="store_true", help="print mailpipe(8) as roff: man -l <(mailpipe help --man)")
    helping.set_defaults(run=None)


def run_help(parser: argparse.ArgumentParser, args: argparse.Namespace, version: str) -> int:
    if args.man:
        sys.stdout.write(man_page(parser, version))
        return 0
    wanted = " ".join(args.command)
    if not wanted:
        parser.print_help()
        return 0
    for name, command in walk(parser):
        if name == wanted:
            command.print_help()
            return 0
    names = [name for name, _ in walk(parser) if name.startswith(wanted + " ")]
    if names:
        print("\n".join(names))
        return 0
    print(f"mailpipe: help: no command {wanted!r}", file=sys.stderr)
    return 2


def _roff(text: str) -> str:
    escaped = text.replace("\\", "\\e").replace("-", "\\-")
    return "\n".join(("\\&" + line) if line.startswith((".", "'")) else line for line in escaped.splitlines())


def man_page(parser: argparse.ArgumentParser, version: str) -> str:
    out = [f'.TH MAILPIPE 8 "{datetime.now(UTC):%Y-%m-%d}" "mailpipe {version}" "System Administration"',
           ".SH NAME", "mailpipe \\- support-mail and deliverability daemon and its operator's commands",
           ".SH SYNOPSIS", ".B mailpipe", ".I COMMAND", "[\\fIOPTIONS\\fR]", ".SH DESCRIPTION", _roff(_INTRO),
           ".SH COMMANDS"]
    for name, command in walk(parser):
        usage = command.format_usage().removeprefix("usage: ").strip()
        out += [".SS " + _roff(name), ".nf", _roff(usage), ".fi"]
        if command.description:
            out += [".PP", _roff(command.description)]
        for action in command._actions:
            if isinstance(action, argparse._HelpAction) or action.help in (None, argparse.SUPPRESS):
                continue
            flags = ", ".join(action.option_strings) or (action.metavar or action.dest)
            out += [".TP", f"\\fB{_roff(str(flags))}\\fR", _roff(str(action.help))]
        examples = getattr(command, "examples", ())
        if examples:
            out += [".PP", "Examples:", ".RS", ".nf", *(_roff(line) for line in examples), ".fi", ".RE"]
    for title, text in _SECTIONS:
        out += [f".SH {title}", _roff(text)]
    return "\n".join(out) + "\n"
