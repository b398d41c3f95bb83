"""The config's rules that span several keys, which the type-driven conversion cannot see.

``check`` runs every rule, even over a config where some keys failed to convert (those are
``None`` here and already reported), so ``check-config`` lists every problem in one pass: a
rule that trips over an unconverted value is skipped, since its cause is on the list already.
With ``readable_by`` (the daemon's user, when ``check-config`` runs as root) every file the
config names must also be readable by that user, as the daemon will open it.
"""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mailpipe.addresses import syntax_problem
from mailpipe.config import desk, seeds
from mailpipe.keys import SigningKeyError, load_key
from mailpipe.outbound.footer import unknown_placeholders

if TYPE_CHECKING:
    from mailpipe.config import Config

_HOURS = re.compile(r"([01]\d|2[0-3]):[0-5]\d-([01]\d|2[0-4]):[0-5]\d")
_AGENT_ID = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

Rule = Callable[["Config", str], Iterator[str]]


def check(config: Config, source: str, readable_by: str | None = None) -> list[str]:
    problems: list[str] = []
    rules: list[Rule] = [_agents, _addresses, _tls, _schedules, _retries, _store, _monitors, _footers, _desk]
    rules.append(lambda c, s: _files(c, s, readable_by))
    for rule in rules:
        try:
            problems.extend(rule(config, source))
        except (TypeError, AttributeError, ValueError):
            continue  # built on a key that did not convert: that key's problem is listed
    return problems


def _agents(config: Config, source: str) -> Iterator[str]:
    if not config.agents:
        yield f"{source}: agents: at least one agent is required to receive mail"
    seen: set[str] = set()
    for index, agent in enumerate(config.agents):
        if agent is None:
            continue
        if not _AGENT_ID.match(agent.id):
            yield f"{source}: agents[{index}].id: {agent.id!r} must be lowercase letters, digits, . _ -"
        if agent.id in seen:
            yield f"{source}: agents[{index}].id: duplicate agent id {agent.id!r}"
        seen.add(agent.id)
        if reason := syntax_problem(agent.address):
            yield f"{source}: agents[{index}].address: {agent.address!r}: {reason}"


def _addresses(config: Config, source: str) -> Iterator[str]:
    for index, address in enumerate(config.inbound.addresses):
        if reason := syntax_problem(address):
            yield f"{source}: inbound.addresses[{index}]: {address!r}: {reason}"


def _tls(config: Config, source: str) -> Iterator[str]:
    inbound, submission = config.inbound, config.submission
    if bool(inbound.tls_certificate) != bool(inbound.tls_key):
        yield f"{source}: inbound.tls_key: tls_certificate and tls_key must be set together"
    if bool(submission.tls_certificate) != bool(submission.tls_key):
        yield f"{source}: submission.tls_key: tls_certificate and tls_key must be set together"
    if not config.submission_tls[0] and not (submission.plaintext_auth_on_loopback and submission.on_loopback):
        yield (f"{source}: submission.tls_certificate: submission on {submission.listen} needs a"
               " certificate: passwords are only accepted over TLS off loopback")


def _named_files(config: Config) -> dict[str, str]:
    inbound, submission = config.inbound, config.submission
    files = {"inbound.tls_certificate": inbound.tls_certificate, "inbound.tls_key": inbound.tls_key,
             "delivery.ca_file": config.delivery.ca_file, "submission.tls_certificate": submission.tls_certificate,
             "submission.tls_key": submission.tls_key, "outbound.ca_file": config.outbound.ca_file}
    files.update({f"dkim[{i}].key_file": key.key_file for i, key in enumerate(config.dkim) if key is not None})
    return {key: value for key, value in files.items() if value}


def _files(config: Config, source: str, readable_by: str | None) -> Iterator[str]:
    for key, value in _named_files(config).items():
        path = Path(value)
        if not path.is_file():
            yield f"{source}: {key}: no such file {value!r}"
        elif not os.access(path, os.R_OK):
            yield f"{source}: {key}: {value!r} is not readable by {_me()}"
        elif readable_by and not readable(path, readable_by):
            yield (f"{source}: {key}: {value!r} is not readable by {readable_by}, who runs the daemon"
                   f" (chown {readable_by}: {value}, or chgrp {readable_by} and chmod g+r)")
    for index, key in enumerate(config.dkim):
        if key is not None and key.key_file and Path(key.key_file).is_file() and os.access(key.key_file, os.R_OK):
            try:
                load_key(key.domain, key.selector, key.algorithm, Path(key.key_file))
            except SigningKeyError as exc:
                yield f"{source}: dkim[{index}].key_file: {exc}"


def readable(path: Path, user: str) -> bool:
    """Whether ``user`` may read ``path`` by its mode bits, walking every parent directory."""
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        return True  # no such user here (not installed yet): nothing to judge by
    if account.pw_uid == 0:
        return True
    groups = {account.pw_gid, *(g for g in os.getgrouplist(user, account.pw_gid))}

    def allowed(info: os.stat_result, bits: tuple[int, int, int]) -> bool:
        if info.st_uid == account.pw_uid:
            return bool(info.st_mode & bits[0])
        if info.st_gid in groups:
            return bool(info.st_mode & bits[1])
        return bool(info.st_mode & bits[2])

    resolved = path.resolve()
    search = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
    if not all(allowed(parent.stat(), search) for parent in resolved.parents):
        return False
    return allowed(resolved.stat(), (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH))


def _me() -> str:
    try:
        return pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        return str(os.geteuid())


def _schedules(config: Config, source: str) -> Iterator[str]:
    from mailpipe.config import WEEKDAYS

    triage = config.triage
    try:
        ZoneInfo(triage.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        yield f"{source}: triage.timezone: unknown time zone {triage.timezone!r}"
    schedules = [("triage.business_hours", triage.business_hours, "triage.business_days", triage.business_days)]
    schedules += [(f"agents[{i}].hours", a.hours, f"agents[{i}].days", a.days)
                  for i, a in enumerate(config.agents) if a is not None]
    for hours_key, hours, days_key, days in schedules:
        if hours and not _HOURS.fullmatch(hours):
            yield f"{source}: {hours_key}: {hours!r} is not HH:MM-HH:MM"
        for index, day in enumerate(days or ()):
            if day not in WEEKDAYS:
                yield f"{source}: {days_key}[{index}]: {day!r} is not one of {', '.join(WEEKDAYS)}"


def _retries(config: Config, source: str) -> Iterator[str]:
    for section in ("spool", "outbound"):
        settings = getattr(config, section)
        if settings.retry_max < settings.retry_initial:
            yield f"{source}: {section}.retry_max: must not be shorter than {section}.retry_initial"
    if config.outbound.max_per_destination < 1:
        yield f"{source}: outbound.max_per_destination: must be at least 1"


def _store(config: Config, source: str) -> Iterator[str]:
    if config.store.url and not config.store.url.startswith(("postgresql://", "postgres://")):
        yield f"{source}: store.url: {config.store.url.split(':')[0]!r} is not postgresql:// (empty: SQLite)"


def _monitors(config: Config, source: str) -> Iterator[str]:
    monitors = config.monitors
    yield from seeds.problems(source, tuple(seed for seed in monitors.seeds if seed is not None))
    if monitors.probe_agent and monitors.probe_agent not in {a.id for a in config.agents if a is not None}:
        yield f"{source}: monitors.probe_agent: no agent {monitors.probe_agent!r}"
    accepted = {a.casefold() for a in config.inbound.addresses}
    for index, address in enumerate(monitors.dmarc_report_addresses):
        if address.casefold() not in accepted:
            yield (f"{source}: monitors.dmarc_report_addresses[{index}]: {address!r} must also be one of"
                   " inbound.addresses, or reports for it are refused")
    for index, ip in enumerate(monitors.sending_ips):
        try:
            ipaddress.ip_address(ip)
        except ValueError:
            yield f"{source}: monitors.sending_ips[{index}]: {ip!r} is not an IP address"


def _desk(config: Config, source: str) -> Iterator[str]:
    yield from desk.check(config, source)


def _footers(config: Config, source: str) -> Iterator[str]:
    """A misspelt placeholder would reach every customer as ``{nmae}``."""
    for key in ("footer_ja", "footer_en"):
        template = getattr(config.outbound, key)
        for name in unknown_placeholders(template or ""):
            yield f"{source}: outbound.{key}: unknown placeholder {{{name}}} (known: {{name}}, {{phone}}, {{case}})"
