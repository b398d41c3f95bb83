"""Typed, validated configuration: embedded defaults with one operator file merged over them.

Other modules never read TOML: the composition root (``mailpipe.daemon``) loads a ``Config``
here and hands each part the section it needs. Every error names the file and the dotted key
(and the line for TOML syntax errors). Every bad key is reported at once, then the checks that
span several keys, so ``check-config`` and a refused SIGHUP reload list what is wrong together.
The sections are declared here as dataclasses; ``convert`` turns TOML into them by their type
hints (with ``Seconds``, ``Bytes`` and ``Endpoint``), and ``_check`` holds the rules that span
keys. Provider names come from ``mailpipe.providers``, DKIM key checks from ``mailpipe.keys``.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from mailpipe.config.convert import Bytes, Endpoint, Seconds, convert
from mailpipe.config.desk import DeskConfig
from mailpipe.config.seeds import Seed
from mailpipe.data import shipped
from mailpipe.errors import Problems

DEFAULT_CONFIG_PATH = Path("/etc/mailpipe/mailpipe.toml")
# StateDirectory=mailpipe of the shipped unit: where the installed daemon keeps its state.
SYSTEM_STATE_DIRECTORY = Path("/var/lib/mailpipe")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
EMBEDDED = "<embedded defaults>"


@dataclass(frozen=True)
class InboundConfig:
    listen: Endpoint
    hostname: str
    addresses: tuple[str, ...]
    max_message_size: Bytes
    max_recipients: int
    max_connections: int
    max_connections_per_ip: int
    idle_timeout: Seconds
    data_timeout: Seconds
    tls_certificate: str
    tls_key: str

    @property
    def domains(self) -> frozenset[str]:
        return frozenset(address.rpartition("@")[2] for address in self.addresses)


@dataclass(frozen=True)
class SpoolConfig:
    workers: int
    retry_initial: Seconds
    retry_max: Seconds
    max_lifetime: Seconds
    max_stage_failures: int


@dataclass(frozen=True)
class DeliveryConfig:
    method: Literal["maildir", "smtp", "lmtp"]
    maildir_root: str
    host: str
    port: int
    starttls: bool
    ca_file: str
    username: str
    password: str
    timeout: Seconds


@dataclass(frozen=True)
class MetricsConfig:
    listen: Endpoint


@dataclass(frozen=True)
class AuthConfig:
    # DNS servers for SPF, DKIM and DMARC lookups; empty: the system's resolver.
    nameservers: tuple[Endpoint, ...]


@dataclass(frozen=True)
class TriageConfig:
    rules_directory: str
    rules_overrides: str
    timezone: str
    business_hours: str
    business_days: tuple[str, ...]
    subject_tags: bool
    # The learned urgency model (rules/model.toml turns its verdict into points).
    model: bool = True
    corpus_directory: str = ""
    corpus_overrides: str = "/etc/mailpipe/corpus.d"

    @property
    def rules_path(self) -> Path:
        return Path(self.rules_directory) if self.rules_directory else shipped("rules")

    @property
    def corpus_paths(self) -> list[Path]:
        """The labelled mail the model learns from: the shipped corpus (or the configured one),
        then the desk's own files."""
        paths = [Path(self.corpus_directory) if self.corpus_directory else shipped("rules") / "corpus"]
        if self.corpus_overrides and Path(self.corpus_overrides).is_dir():
            paths.append(Path(self.corpus_overrides))
        return paths


@dataclass(frozen=True)
class SubmissionConfig:
    listen: Endpoint
    # Empty: inbound.hostname, and inbound's certificate.
    hostname: str
    tls_certificate: str
    tls_key: str
    plaintext_auth_on_loopback: bool
    max_message_size: Bytes
    max_recipients: int
    max_connections: int
    max_connections_per_ip: int
    idle_timeout: Seconds
    data_timeout: Seconds
    max_auth_failures: int
    auth_failure_window: Seconds
    lockout: Seconds
    double_reply_window: Seconds

    @property
    def on_loopback(self) -> bool:
        return self.listen.host == "localhost" or ipaddress.ip_address(self.listen.host).is_loopback


@dataclass(frozen=True)
class ResponseTimes:
    critical: Seconds
    high: Seconds
    normal: Seconds
    low: Seconds


@dataclass(frozen=True)
class OutboundConfig:
    hostname: str
    smarthost: str
    smarthost_port: int
    smarthost_username: str
    smarthost_password: str
    remote_port: int
    tls_required_domains: tuple[str, ...]
    ca_file: str
    workers: int
    max_per_destination: int
    retry_initial: Seconds
    retry_max: Seconds
    max_lifetime: Seconds
    timeout: Seconds
    footer_ja: str
    footer_en: str
    autoreply: bool
    autoreply_window: Seconds
    replies_overrides: str
    response_times: ResponseTimes

    @property
    def replies_overrides_path(self) -> Path | None:
        return Path(self.replies_overrides) if self.replies_overrides else None

    def spool(self, max_stage_failures: int) -> SpoolConfig:
        return SpoolConfig(self.workers, self.retry_initial, self.retry_max, self.max_lifetime, max_stage_failures)


@dataclass(frozen=True)
class StoreConfig:
    # Empty: SQLite in the state directory. postgresql://user:password@host/db: shared by daemons.
    url: str


@dataclass(frozen=True)
class MonitorsConfig:
    # Sending domains to check; empty: the domains of inbound.addresses and of the DKIM keys.
    domains: tuple[str, ...]
    # The public addresses our mail leaves from (SPF authorisation, PTR); empty: not checked.
    sending_ips: tuple[str, ...]
    dns_interval: Seconds
    # Provider requirement profiles. Empty: the shipped monitors/providers/.
    providers_directory: str
    # Requirements with scope = "bulk" apply only to a bulk sender (Gmail: ~5,000+ a day).
    bulk_sender: bool
    # Where DMARC aggregate reports (rua) arrive: mail to these goes to the report parser.
    dmarc_report_addresses: tuple[str, ...]
    # This many refusals for authentication, reputation, policy or content from one provider
    # within incident_window open an incident; incident_quiet without one ends it.
    incident_threshold: int
    incident_window: Seconds
    incident_quiet: Seconds
    # Placement probes: every probe_interval a tokened message goes to each seed mailbox through
    # the outbound path; found in its inbox, its spam folder, or not within probe_timeout.
    seeds: tuple[Seed, ...]
    probe_interval: Seconds
    probe_timeout: Seconds
    probe_poll: Seconds
    # The probe's sender (default: the first inbound address) and the agent it is stamped for.
    probe_from: str
    probe_agent: str

    @property
    def providers_path(self) -> Path:
        return Path(self.providers_directory) if self.providers_directory else shipped("monitors") / "providers"


@dataclass(frozen=True)
class DkimKey:
    domain: str
    selector: str
    key_file: str
    algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"


@dataclass(frozen=True)
class Agent:
    id: str
    name: str
    address: str
    phone: str = ""
    tier: Literal["support", "tech", "dev"] = "support"
    # On duty: these days and hours in the desk's time zone; empty means the desk's business hours.
    days: tuple[str, ...] = ()
    hours: str = ""


@dataclass(frozen=True)
class Config:
    state_directory: str
    log_level: Literal["debug", "info", "warning", "error"]
    shutdown_timeout: Seconds
    inbound: InboundConfig
    spool: SpoolConfig
    delivery: DeliveryConfig
    metrics: MetricsConfig
    auth: AuthConfig
    triage: TriageConfig
    submission: SubmissionConfig
    outbound: OutboundConfig
    dkim: tuple[DkimKey, ...]
    monitors: MonitorsConfig
    store: StoreConfig
    desk: DeskConfig
    agents: tuple[Agent, ...]
    source: str = field(default=EMBEDDED, compare=False)

    @property
    def state_path(self) -> Path:
        return self.state_search()[0]

    def state_search(self) -> tuple[Path, tuple[str, ...]]:
        """The state directory, found the same way by the daemon and every command, and where
        it looked: ``state_directory``; systemd's ``$STATE_DIRECTORY`` (the daemon under the unit);
        the unit's /var/lib/mailpipe when the config is the installed one (an operator's shell has
        no ``$STATE_DIRECTORY``); ``./var`` for the quick start."""
        if self.state_directory:
            return Path(self.state_directory), (f"state_directory = {self.state_directory!r} in {self.source}",)
        looked = [f"no state_directory in {self.source}"]
        if systemd := os.environ.get("STATE_DIRECTORY", "").split(":")[0]:
            return Path(systemd), (*looked, f"$STATE_DIRECTORY = {systemd}")
        looked.append("no $STATE_DIRECTORY (systemd sets it only for the service)")
        if self.source == str(DEFAULT_CONFIG_PATH):
            return SYSTEM_STATE_DIRECTORY, (*looked, f"the installed unit's StateDirectory {SYSTEM_STATE_DIRECTORY}")
        looked.append(f"not the installed config {DEFAULT_CONFIG_PATH}, so not {SYSTEM_STATE_DIRECTORY}")
        return Path("var"), (*looked, f"./var under {Path.cwd()} (the quick start)")

    @property
    def spool_path(self) -> Path:
        return self.state_path / "spool"

    @property
    def store_path(self) -> Path:
        return self.state_path / "store.sqlite"

    @property
    def submission_hostname(self) -> str:
        return self.submission.hostname or self.inbound.hostname

    @property
    def submission_tls(self) -> tuple[str, str]:
        if self.submission.tls_certificate:
            return self.submission.tls_certificate, self.submission.tls_key
        return self.inbound.tls_certificate, self.inbound.tls_key

    @property
    def outbound_hostname(self) -> str:
        return self.outbound.hostname or self.inbound.hostname

    @property
    def sending_domains(self) -> tuple[str, ...]:
        if self.monitors.domains:
            return tuple(d.lower() for d in self.monitors.domains)
        found = [a.rpartition("@")[2].lower() for a in self.inbound.addresses] + [k.domain.lower() for k in self.dkim]
        return tuple(dict.fromkeys(found))

    @property
    def maildir_root(self) -> Path:
        return Path(self.delivery.maildir_root) if self.delivery.maildir_root else self.state_path / "mailboxes"


class ConfigError(Problems):
    """One or more problems, each already phrased as ``file: key: reason``."""


def load_defaults() -> Config:
    """The embedded defaults alone (``check-config`` judges the rules with them when the file is broken)."""
    return _build(_defaults(), EMBEDDED, None)


def _defaults() -> dict[str, Any]:
    return tomllib.loads(resources.files("mailpipe").joinpath("defaults.toml").read_text("utf-8"))


def load(path: Path | None = None, readable_by: str | None = None) -> Config:
    """Defaults merged with ``path`` (or /etc/mailpipe/mailpipe.toml when it exists).
    ``readable_by``: also check that this user (the daemon's) can read every file named."""
    defaults = _defaults()
    if path is None and DEFAULT_CONFIG_PATH.exists():
        path = DEFAULT_CONFIG_PATH
    if path is None:
        return _build(defaults, EMBEDDED, readable_by)
    source = str(path)
    try:
        text = Path(path).read_text("utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{source}: not UTF-8 text"]) from None
    try:
        overrides = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: TOML syntax: {exc}"]) from None
    return _build(_merge(defaults, overrides), source, readable_by)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build(data: dict[str, Any], source: str, readable_by: str | None) -> Config:
    """Every problem at once: bad keys, and the checks spanning keys over what did convert."""
    problems: list[str] = []
    config = convert(Config, data, "", source, problems)
    if config is not None:
        problems.extend(check(config, source, readable_by))
    if problems:
        raise ConfigError(problems)
    return dataclasses.replace(config, source=source)


from mailpipe.config.checks import check  # noqa: E402  (the checks read the dataclasses above)
