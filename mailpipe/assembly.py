"""From one ``Config`` to the parts the daemon runs: listener settings, mailbox delivery, signing
keys, monitor settings, and each queue's route. Built at start and again on reload, where a
builder that raises leaves the running parts in place (``daemon.Daemon._reload``).
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mailpipe.addresses import domain_of
from mailpipe.config import Config
from mailpipe.deliver import Deliverer
from mailpipe.deliver.maildir import MaildirDeliverer
from mailpipe.deliver.relay import RelayDeliverer
from mailpipe.desk.commands import Commands
from mailpipe.desk.route import Desk, DeskWork
from mailpipe.keys import SigningKey, load_key
from mailpipe.metrics import Metrics
from mailpipe.monitors import profiles
from mailpipe.monitors.incidents import Incidents
from mailpipe.monitors.probes import ProbeSettings
from mailpipe.monitors.returned import Returned
from mailpipe.monitors.runner import MonitorSettings
from mailpipe.monitors.traffic import Traffic
from mailpipe.offload import Offload
from mailpipe.outbound import classify
from mailpipe.outbound.acknowledge import Acknowledger
from mailpipe.outbound.fates import Fates
from mailpipe.outbound.queue import SendQueue
from mailpipe.outbound.replies import Replies, ReplyWork
from mailpipe.outbound.send import Transport, resolver
from mailpipe.outbound.signing import Signer
from mailpipe.queues import DESK, INBOUND, OUTBOUND, SUBMISSION
from mailpipe.smtp.server import ListenerSettings
from mailpipe.spool import Message, Spool
from mailpipe.store import Store
from mailpipe.triage import load as triage_load
from mailpipe.triage.learning import Learner
from mailpipe.triage.stages import Triage
from mailpipe.triage.work import Work
from mailpipe.worker import Route, Worker


def listener_settings(config: Config) -> ListenerSettings:
    inbound = config.inbound
    return ListenerSettings(
        name="inbound", host=inbound.listen.host, port=inbound.listen.port, hostname=inbound.hostname,
        max_message_size=inbound.max_message_size, max_connections=inbound.max_connections,
        max_connections_per_ip=inbound.max_connections_per_ip, idle_timeout=inbound.idle_timeout,
        data_timeout=inbound.data_timeout, tls_context=server_tls(inbound.tls_certificate, inbound.tls_key))


def server_tls(certificate: str, key: str) -> ssl.SSLContext | None:
    if not certificate:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certificate, key)
    return context


def submission_settings(config: Config) -> ListenerSettings:
    submission = config.submission
    return ListenerSettings(
        name="submission", host=submission.listen.host, port=submission.listen.port,
        hostname=config.submission_hostname, max_message_size=submission.max_message_size,
        max_connections=submission.max_connections, max_connections_per_ip=submission.max_connections_per_ip,
        idle_timeout=submission.idle_timeout, data_timeout=submission.data_timeout,
        tls_context=server_tls(*config.submission_tls), auth_required=True,
        plaintext_auth_on_loopback=submission.plaintext_auth_on_loopback)


def deliverer(config: Config) -> Deliverer:
    if config.delivery.method == "maildir":
        return MaildirDeliverer(config.maildir_root)
    return RelayDeliverer(config.delivery)


def signing_keys(config: Config) -> tuple[SigningKey, ...]:
    return tuple(load_key(k.domain, k.selector, k.algorithm, Path(k.key_file)) for k in config.dkim)


def probe_settings(config: Config) -> ProbeSettings:
    monitors = config.monitors
    support = [a for a in config.agents if a.tier == "support"] or list(config.agents)
    return ProbeSettings(monitors.seeds, monitors.probe_interval, monitors.probe_timeout, monitors.probe_poll,
                         monitors.probe_from or config.inbound.addresses[0], monitors.probe_agent or support[0].id,
                         config.outbound_hostname)


def monitor_settings(config: Config, keys: tuple[SigningKey, ...]) -> MonitorSettings:
    """Raises ProfileError for a broken provider profile."""
    monitors = config.monitors
    return MonitorSettings(config.sending_domains, monitors.sending_ips, keys,
                           config.outbound_hostname, monitors.dns_interval, profiles.load(monitors.providers_path),
                           monitors.bulk_sender)


def reply_catalog(config: Config) -> classify.Catalog:
    return classify.configured(config.outbound.replies_overrides_path)


def routes(config: Config, keys: tuple[SigningKey, ...], store: Store, metrics: Metrics, outbound: Spool,
           traffic: Traffic, incidents: Incidents, learner: Learner, signing: Offload) -> dict[str, Route[Any]]:
    """Each queue's route (``mailpipe.queues``), built from one config and swapped together on
    reload. Raises ``Problems`` (RulesError, CatalogError) when policy files are broken: a reload then
    keeps the routes already running."""
    to_mailbox = deliverer(config)
    sign = Signer(keys)
    hostname = config.outbound_hostname
    acknowledger = Acknowledger(config.outbound, config.inbound.addresses, config.agents, sign, hostname, metrics)
    catalog = reply_catalog(config)
    returned = Returned(store, metrics, to_mailbox, config.inbound.hostname, config.agents,
                        config.monitors.dmarc_report_addresses, catalog, incidents)
    triage = Triage(triage_load.ruleset(config.triage), config.agents, config.triage, store, config.inbound.hostname,
                    metrics, to_mailbox, acknowledger, outbound, returned, incidents, model=lambda: learner.current,
                    lead=config.desk.lead, reader=learner.reader)
    commands_run = Commands(store, metrics, learner.learn, config.spool_path / SUBMISSION.file, config.agents)
    desk = Desk(config.agents, config.inbound.domains, store, commands_run, to_mailbox, config.inbound.hostname)
    replies = Replies(config.agents, config.outbound, config.submission.double_reply_window, store, sign, signing,
                      outbound, to_mailbox, hostname, metrics, config.triage.timezone,
                      domain_of(config.inbound.addresses[0]) if config.inbound.addresses else "")
    nameservers = [(ns.host, ns.port) for ns in config.auth.nameservers]
    transport = Transport(config.outbound, hostname, resolver(nameservers), catalog)
    sender = SendQueue(transport, config.outbound, config.agents, to_mailbox, hostname, metrics, traffic, incidents,
                       Fates(store, metrics), sent=store)
    sending = config.outbound.spool(config.spool.max_stage_failures)
    inbound: Route[Work] = Route(Work, triage.stages, triage.hand_off, config.spool, to_mailbox.method, triage.count,
                                 triage.summary, executor=triage.executor,
                                 exactly_once=isinstance(to_mailbox, MaildirDeliverer))
    submitted: Route[ReplyWork] = Route(ReplyWork, replies.stages, replies.hand_off, config.spool, OUTBOUND.name,
                                        summary=replies.summary, event="queued for sending", moves_on=True)
    outgoing: Route[Message] = Route(_itself, (), sender.hand_off, sending, "smtp", summary=sender.summary,
                                     event="removed")
    commands: Route[DeskWork] = Route(DeskWork, desk.stages, desk.hand_off, config.spool, to_mailbox.method,
                                      summary=desk.summary, event="done")
    return {INBOUND.name: inbound, SUBMISSION.name: submitted, OUTBOUND.name: outgoing, DESK.name: commands}


def store_failing(workers: Iterable[Worker]) -> bool:
    """A worker defers mail because the store fails under it (read-only, disk full, corrupt)."""
    return any("store" in worker.faults for worker in workers)


def _itself(message: Message) -> Message:
    return message
