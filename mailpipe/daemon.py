"""The composition root: builds every part from one ``Config`` and runs them on one loop.

Life cycle: take the state directory's lock, recover what a crash left claimed, bind the SMTP
and HTTP listeners, start the worker, then tell systemd READY=1. SIGHUP loads the config again
and swaps it in only if it is valid (the old one keeps running otherwise); SIGTERM and SIGINT
stop accepting, let sessions in DATA and hand-offs in flight finish within
``shutdown_timeout``, and exit 0. No business logic lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import sys
import time
from pathlib import Path

from mailpipe import auth, logs
from mailpipe import config as configuration
from mailpipe.config import Config
from mailpipe.deliver import Deliverer
from mailpipe.deliver.maildir import MaildirDeliverer
from mailpipe.deliver.relay import RelayDeliverer
from mailpipe.http import StatusServer
from mailpipe.metrics import Metrics
from mailpipe.pipeline import Triage, Work
from mailpipe.sdnotify import Notifier
from mailpipe.smtp.inbound import InboundHandler, RecipientPolicy
from mailpipe.smtp.server import Listener, ListenerSettings
from mailpipe.spool import Spool, SpoolLock
from mailpipe.store import Store
from mailpipe.store.sqlite import SQLiteStore
from mailpipe.triage import load as triage_load
from mailpipe.triage.rules import RulesError
from mailpipe.worker import Route, Worker

log = logging.getLogger("mailpipe.daemon")

_STATS_INTERVAL = 2.0


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


def deliverer(config: Config) -> Deliverer:
    if config.delivery.method == "maildir":
        return MaildirDeliverer(config.maildir_root)
    return RelayDeliverer(config.delivery)


def inbound_route(config: Config, store: Store, metrics: Metrics) -> Route:
    """Raises RulesError when the configured rules are broken: a reload then keeps the old route."""
    to_mailbox = deliverer(config)
    triage = Triage(triage_load.ruleset(config.triage), config.agents, config.triage, store, config.inbound.hostname,
                    metrics, to_mailbox)
    return Route(Work, triage.stages, triage.hand_off, config.spool, to_mailbox.method, triage.count, triage.summary)


class Daemon:
    def __init__(self, config: Config, config_path: Path | None):
        self.config = config
        self._config_path = config_path
        self._notifier = Notifier()
        self._metrics = Metrics()
        self._stop = asyncio.Event()
        self._spool: Spool | None = None
        self._listener: Listener | None = None
        self._handler: InboundHandler | None = None
        self._worker: Worker | None = None
        self._store: SQLiteStore | None = None
        self._commits_seen = (0, 0)

    async def run(self) -> int:
        config = self.config
        lock = SpoolLock(config.spool_path)
        spool = self._spool = Spool(config.spool_path / "inbound.sqlite")
        store = self._store = SQLiteStore(config.store_path)
        try:
            recovered = await spool.recover()
            if recovered:
                log.warning("recovered messages claimed before a crash", extra={"count": recovered})
            self._handler = InboundHandler(RecipientPolicy.from_config(config.inbound), spool, self._metrics,
                                           config.inbound.hostname)
            self._listener = Listener(listener_settings(config), self._handler, self._metrics)
            self._worker = Worker("inbound", spool, inbound_route(config, store, self._metrics), self._metrics)
            status = StatusServer(config.metrics.listen.host, config.metrics.listen.port, self._metrics,
                                  self._health)
            await self._listener.start()
            await status.start()
            self._metrics.config_last_reload.set_to_current_time()
            background = [asyncio.create_task(self._worker.run(), name="worker"),
                          asyncio.create_task(self._export_stats(), name="stats"),
                          asyncio.create_task(self._watchdog(), name="watchdog")]
            self._install_signals()
            self._notifier.ready(f"accepting mail on {config.inbound.listen}")
            log.info("ready", extra={"config": config.source, "state": str(config.state_path)})
            await self._stop.wait()

            self._notifier.stopping()
            log.info("stopping", extra={"timeout": config.shutdown_timeout})
            await self._listener.drain(self.config.shutdown_timeout)
            await self._worker.stop(self.config.shutdown_timeout)
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await status.close()
        finally:
            spool.close()
            store.close()
            lock.release()
        log.info("stopped")
        return 0

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self._stop.set)
        loop.add_signal_handler(signal.SIGINT, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.create_task(self.reload()))

    async def reload(self) -> bool:
        """Swap in a freshly loaded config, or keep the running one if the new one is broken."""
        self._notifier.reloading()
        try:
            assert self._store is not None
            new = await asyncio.to_thread(configuration.load, self._config_path)
            settings = listener_settings(new)
            route = await asyncio.to_thread(inbound_route, new, self._store, self._metrics)
        except (configuration.ConfigError, RulesError, OSError, ssl.SSLError) as exc:
            self._metrics.config_reloads.labels("failure").inc()
            problems = exc.problems if isinstance(exc, (configuration.ConfigError, RulesError)) else [str(exc)]
            for problem in problems:
                log.error("reload refused, keeping the running config", extra={"problem": problem})
            self._notifier.ready("reload refused; running the previous config")
            return False
        for key in ("state_directory", "metrics"):
            if getattr(new, key) != getattr(self.config, key):
                log.warning("setting needs a restart", extra={"key": key})
        assert self._listener and self._handler and self._worker
        self._listener.reconfigure(settings)
        self._handler.policy = RecipientPolicy.from_config(new.inbound)
        self._handler.hostname = new.inbound.hostname
        self._worker.route = route
        logging.getLogger().setLevel(new.log_level.upper())
        self.config = new
        self._metrics.config_reloads.labels("success").inc()
        self._metrics.config_last_reload.set_to_current_time()
        log.info("reloaded", extra={"config": new.source})
        self._notifier.ready(f"accepting mail on {new.inbound.listen}")
        return True

    def _health(self) -> dict[str, str]:
        problems = {}
        if self._spool is None or not self._spool.healthy:
            problems["spool"] = "spool writer is not running"
        return problems

    async def _export_stats(self) -> None:
        assert self._spool is not None
        while True:
            stats = await self._spool.stats()
            for state, depth in stats.depth.items():
                self._metrics.spool_messages.labels("inbound", state).set(depth)
                self._metrics.spool_oldest.labels("inbound", state).set(stats.oldest_age[state])
            commits, operations = self._spool.commit_groups
            self._metrics.spool_commits.labels("inbound").inc(commits - self._commits_seen[0])
            self._metrics.spool_operations.labels("inbound").inc(operations - self._commits_seen[1])
            self._commits_seen = (commits, operations)
            assert self._store is not None
            now = time.time()
            for level, (count, oldest) in (await asyncio.to_thread(self._store.open_cases)).items():
                self._metrics.cases_open.labels(level).set(count)
                self._metrics.case_oldest_open.labels(level).set(max(0.0, now - oldest) if count else 0)
            await asyncio.sleep(_STATS_INTERVAL)

    async def _watchdog(self) -> None:
        """Pings systemd only while the loop turns and the spool can write, so a wedged daemon
        is restarted by WatchdogSec instead of silently refusing mail."""
        interval = self._notifier.watchdog_interval
        if interval is None:
            return
        while True:
            if not self._health():
                self._notifier.watchdog()
            await asyncio.sleep(interval)


# The spool's committer and the Maildir writers are threads. With CPython's default 5 ms GIL
# switch interval, a commit that finished waits for the busy event loop to yield, and every SMTP
# client waits with it; 0.5 ms cut the time from end of DATA to 250 by half (bench/ingest.py).
_GIL_SWITCH_INTERVAL = 0.0005


def serve(config_path: Path | None) -> int:
    config = configuration.load(config_path)
    logs.setup(config.log_level)
    auth.configure_resolver([(ns.host, ns.port) for ns in config.auth.nameservers])
    sys.setswitchinterval(_GIL_SWITCH_INTERVAL)
    started = time.monotonic()
    code = asyncio.run(Daemon(config, config_path).run())
    log.info("exit", extra={"uptime": round(time.monotonic() - started, 1)})
    return code
