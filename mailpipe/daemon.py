"""The composition root: builds every part from one ``Config`` (with the builders of
``mailpipe.assembly``) and runs them on one loop.

Life cycle: take the state directory's lock, recover what a crash left claimed, read the urgency
corpus, bind the SMTP and HTTP listeners, start the workers, then tell systemd READY=1; the
inbound queue's worker starts once the urgency model is fitted (seconds of CPU: mail waits in
the spool meanwhile, and the status says "triaging mail" after). A part that fails (a worker
raises) is logged, counted and started again after a pause. SIGHUP loads the config again
and swaps it in only if it is valid (the old one keeps running otherwise); SIGTERM and SIGINT
stop accepting, let sessions in DATA and hand-offs in flight finish within
``shutdown_timeout``, and exit 0. SIGHUPs in quick succession reload one after another, the
newest file last. No business logic lives here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import signal
import sqlite3
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from mailpipe import auth, credentials, logs, lookup
from mailpipe import config as configuration
from mailpipe.assembly import (
    deliverer,
    listener_settings,
    monitor_settings,
    probe_settings,
    routes,
    signing_keys,
    store_failing,
    submission_settings,
)
from mailpipe.config import Config
from mailpipe.digest import Digests
from mailpipe.errors import Problems
from mailpipe.http import StatusServer
from mailpipe.keys import SigningKeyError
from mailpipe.metrics import Metrics
from mailpipe.monitors.incidents import Incidents
from mailpipe.monitors.probes import Prober
from mailpipe.monitors.runner import Monitors
from mailpipe.monitors.traffic import Traffic
from mailpipe.offload import Offload
from mailpipe.queues import INBOUND, OUTBOUND, QUEUES, SPOOLS
from mailpipe.sdnotify import Notifier
from mailpipe.smtp.inbound import InboundHandler, RecipientPolicy
from mailpipe.smtp.server import Listener
from mailpipe.smtp.submission import SubmissionHandler
from mailpipe.spool import Spool, SpoolLock
from mailpipe.store import StoreUnavailable
from mailpipe.store.backends import open_store
from mailpipe.store.sql import SQLStore
from mailpipe.triage.learning import Learner
from mailpipe.triage.model import UrgencyModel
from mailpipe.triage.rules import LEVELS
from mailpipe.worker import Worker

log = logging.getLogger("mailpipe.daemon")

_STATS_INTERVAL = 2.0
# A failed part's pause before it runs again, doubling; back to the first after a minute's good run.
_RESTART_FIRST, _RESTART_MAX, _RESTART_GOOD_RUN = 1.0, 300.0, 60.0
TRIAGING = "; triaging mail"  # the end of the status once the inbound queue's worker runs
_SPOOL_OF = {"inbound": "inbound", "submission": "outbound", "outbound": "outbound"}  # queue -> spool file


class Daemon:
    def __init__(self, config: Config, config_path: Path | None):
        self.config = config
        self._config_path = config_path
        self._notifier = Notifier()
        self._metrics = Metrics()
        self._stop = asyncio.Event()
        self._spools: dict[str, Spool] = {}
        self._listeners: dict[str, Listener] = {}
        self._handler: InboundHandler | None = None
        self._submission: SubmissionHandler | None = None
        self._workers: dict[str, Worker] = {}
        self._store: SQLStore | None = None
        self._store_problem = ""
        self._commits_seen: dict[str, tuple[int, int]] = {}
        self._traffic = Traffic()
        self._monitors: Monitors | None = None
        self._incidents: Incidents | None = None
        self._prober: Prober | None = None
        self._learner: Learner | None = None
        self._signing = Offload("dkim-sign", SIGNING_THREADS)
        self._reloading = asyncio.Lock()
        self._exit_status = 0
        self._triaging = False  # the inbound queue's worker runs (the urgency model is in place)

    async def run(self) -> int:
        config = self.config
        lock = SpoolLock(config.spool_path)
        self._spools = {name: Spool(config.spool_path / f"{name}.sqlite") for name in SPOOLS}
        inbound, outbound = self._spools[INBOUND.spool], self._spools[OUTBOUND.spool]
        store = self._store = open_store(config)
        try:
            for name, spool in self._spools.items():
                recovered = await spool.recover()
                if recovered:
                    log.warning("recovered messages claimed before a crash", extra={"spool": name, "count": recovered})
            self._incidents = Incidents(store, self._metrics, threshold=config.monitors.incident_threshold,
                                        window=config.monitors.incident_window, quiet=config.monitors.incident_quiet)
            keys = signing_keys(config)
            self._learner = Learner(config.triage, store, self._metrics)
            # The corpus is checked before anything listens (a broken one stops the start, naming
            # the file); the model is fitted while intake already spools mail (seconds of CPU).
            training = asyncio.create_task(self._learner.fit(await self._learner.read(config.triage)),
                                           name="training")
            built = routes(config, keys, store, self._metrics, outbound, self._traffic, self._incidents,
                           self._learner, self._signing)
            self._monitors = Monitors(monitor_settings(config, keys), self._traffic, self._metrics, store,
                                      self._incidents)
            self._prober = Prober(probe_settings(config), outbound, self._metrics)
            self._handler = InboundHandler(RecipientPolicy.from_config(config.inbound), inbound, self._metrics,
                                           config.inbound.hostname)
            submission = config.submission
            self._submission = SubmissionHandler(
                config.agents, config.inbound.addresses, store,
                credentials.Lockout(submission.max_auth_failures, submission.auth_failure_window, submission.lockout),
                outbound, self._metrics, config.submission_hostname, submission.max_recipients)
            self._listeners = {"inbound": Listener(listener_settings(config), self._handler, self._metrics),
                               "submission": Listener(submission_settings(config), self._submission, self._metrics)}
            self._workers = {queue.name: Worker(queue.name, self._spools[queue.spool], built[queue.name], self._metrics)
                             for queue in QUEUES}
            status = StatusServer(config.metrics.listen.host, config.metrics.listen.port, self._metrics,
                                  self._health, functools.partial(lookup.caller, store, config.agents),
                                  config.desk.lookup_token)
            for listener in self._listeners.values():
                await listener.start()
            await status.start()
            self._metrics.config_last_reload.set_to_current_time()
            parts: dict[str, Callable[[], Awaitable[None]]] = {
                f"worker:{name}": worker.run for name, worker in self._workers.items() if name != INBOUND.name}
            parts |= {"stats": self._export_stats, "monitors": self._monitors.run, "probes": self._prober.run,
                      "watchdog": self._watchdog,
                      "digest": Digests(lambda: self.config, store, lambda: deliverer(self.config)).run}
            background = [asyncio.create_task(self._supervised(name, run), name=name) for name, run in parts.items()]
            self._install_signals()
            self._notifier.ready(self._status_line(config))
            log.info("ready", extra={"config": config.source, "state": str(config.state_path)})
            if await self._trained(training, config):
                name = f"worker:{INBOUND.name}"
                background.append(asyncio.create_task(self._supervised(name, self._workers[INBOUND.name].run),
                                                      name=name))
                self._triaging = True
                self._notifier.notify(f"STATUS={self._status_line(config)}")
            await self._stop.wait()

            self._learner.stop_fitting()
            self._notifier.stopping()
            log.info("stopping", extra={"timeout": config.shutdown_timeout})
            await asyncio.gather(*(listener.drain(self.config.shutdown_timeout)
                                   for listener in self._listeners.values()))
            await asyncio.gather(*(worker.stop(self.config.shutdown_timeout) for worker in self._workers.values()))
            await self._learner.stop()
            for task in background:
                task.cancel()
            await asyncio.gather(*background, return_exceptions=True)  # _supervised logged what failed
            await status.close()
        finally:
            for spool in self._spools.values():
                spool.close()
            store.close()
            self._signing.close()
            lock.release()
        log.info("stopped")
        return self._exit_status

    async def _trained(self, training: asyncio.Task[UrgencyModel | None], config: Config) -> bool:
        """Installs the model fitted at start, once fitted; False if the daemon is stopped first
        (the fit is cancelled, its process killed) or the fitting failed: then it stops, exit
        status 1, as when the corpus is broken. A SIGHUP meanwhile reloads after it, not beside it."""
        async with self._reloading:
            stopped = asyncio.ensure_future(self._stop.wait())
            await asyncio.wait({training, stopped}, return_when=asyncio.FIRST_COMPLETED)
            stopped.cancel()
            if self._stop.is_set():
                training.cancel()
                training.add_done_callback(lambda task: task.cancelled() or task.exception())
                return False
            error = training.exception()
            if error is not None:
                log.critical("urgency model not fitted: stopping", exc_info=(type(error), error, error.__traceback__))
                self._exit_status = 1
                self._stop.set()
                return False
            assert self._learner is not None
            if self._learner.current is None:  # else a correction by mail retrained it meanwhile, newer
                self._learner.install(training.result(), config.triage)
            return True

    async def _supervised(self, name: str, run: Callable[[], Awaitable[None]]) -> None:
        """Runs a part that runs until shutdown (a queue's worker, the monitors, the probes, the
        digest). One that raises anyway — a bug, a failure its own loop does not expect — is
        logged with its traceback, counted (``mailpipe_part_restarts_total``) and started again
        after a pause that doubles up to five minutes: one part failing over and over must not
        stop the mail the others carry, nor take the daemon down (a restart would meet the
        same failure)."""
        delay = _RESTART_FIRST
        self._metrics.part_restarts.labels(name)  # at 0 from the start, so its first failure is an increase
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await run()
                return
            except Exception:
                if time.monotonic() - started > _RESTART_GOOD_RUN:
                    delay = _RESTART_FIRST  # it ran a good while: a new failure, not the same one again
                log.exception("part failed: starting it again", extra={"part": name, "delay": delay})
                self._metrics.part_restarts.labels(name).inc()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(2 * delay, _RESTART_MAX)

    def _status_line(self, config: Config) -> str:
        return (f"accepting mail on {config.inbound.listen}, submission on {config.submission.listen}"
                f"{TRIAGING if self._triaging else ''}")

    def stop(self) -> None:
        """As SIGTERM: stop accepting, finish what is in flight, exit."""
        self._stop.set()

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, self.stop)
        loop.add_signal_handler(signal.SIGINT, self.stop)
        loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.create_task(self.reload()))

    async def reload(self) -> bool:
        """Swap in a freshly loaded config, or keep the running one if the new one is broken.
        Reloads run one at a time in the order asked, each reading the file when its turn comes,
        so the last SIGHUP always leaves the newest file running."""
        async with self._reloading:
            return await self._reload()

    async def _reload(self) -> bool:
        if self._stop.is_set():  # a SIGHUP that waited behind the start's fit, or another reload
            return False
        self._notifier.reloading()
        try:
            assert self._store is not None
            new = await asyncio.to_thread(configuration.load, self._config_path)
            settings = {"inbound": listener_settings(new), "submission": submission_settings(new)}
            assert self._incidents is not None
            keys = await asyncio.to_thread(signing_keys, new)
            assert self._learner is not None
            model = await self._learner.train(new.triage)
            built = await asyncio.to_thread(routes, new, keys, self._store, self._metrics,
                                            self._spools[OUTBOUND.spool], self._traffic, self._incidents,
                                            self._learner, self._signing)
            watching = await asyncio.to_thread(monitor_settings, new, keys)
        except Problems as exc:
            return self._refuse(exc.problems)
        except (SigningKeyError, OSError, ssl.SSLError) as exc:
            return self._refuse([str(exc)])
        if self._stop.is_set():  # stopped while the new config was read: nothing to swap in any more
            return False
        for key in ("state_directory", "metrics"):
            if getattr(new, key) != getattr(self.config, key):
                log.warning("setting needs a restart", extra={"key": key})
        assert self._handler and self._submission
        for name, listener in self._listeners.items():
            listener.reconfigure(settings[name])
        self._handler.policy = RecipientPolicy.from_config(new.inbound)
        self._handler.hostname = new.inbound.hostname
        self._submission.reconfigure(new.agents, new.inbound.addresses, new.submission.max_recipients)
        self._submission.hostname = new.submission_hostname
        self._learner.install(model, new.triage)
        for name, route in built.items():
            self._workers[name].route = route
        assert self._monitors is not None and self._prober is not None
        self._monitors.reconfigure(watching)
        self._prober.reconfigure(probe_settings(new))
        logging.getLogger().setLevel(new.log_level.upper())
        self.config = new
        self._metrics.config_reloads.labels("success").inc()
        self._metrics.config_last_reload.set_to_current_time()
        log.info("reloaded", extra={"config": new.source})
        self._notifier.ready(self._status_line(new))
        return True

    def _refuse(self, problems: list[str]) -> bool:
        self._metrics.config_reloads.labels("failure").inc()
        for problem in problems:
            log.error("reload refused, keeping the running config", extra={"problem": problem})
        self._notifier.ready("reload refused; running the previous config")
        return False

    def _health(self) -> dict[str, str]:
        """What /healthz reports: the spools, and the store (mail waits in the spool without it)."""
        problems = self._fatal()
        if self._store_problem:
            problems["store"] = self._store_problem
        problems.update(self._storage_faults())
        return problems

    def _storage_faults(self) -> dict[str, str]:
        """Spools, the store and disks failing under the workers (disk full, read-only, corrupt):
        mail waits, intake may answer 4xx, and all of it resumes by itself once the fault clears."""
        problems = {f"spool:{name}": spool.fault for name, spool in self._spools.items() if spool.fault}
        for queue, worker in self._workers.items():
            for kind, reason in worker.faults.items():
                key = f"spool:{_SPOOL_OF[queue]}" if kind == "spool" else kind
                problems.setdefault(key, f"{queue} worker: {reason}")
        return problems

    def _fatal(self) -> dict[str, str]:
        """What stops the watchdog: a spool that cannot write (a restart may help; an
        unreachable database would not, and mail is safe in the spool meanwhile)."""
        problems = {}
        for name, spool in self._spools.items():
            if not spool.healthy:
                problems[f"spool:{name}"] = f"{name} spool writer is not running"
        if not self._spools:
            problems["spool"] = "spool writer is not running"
        return problems

    async def _check_storage(self) -> None:
        """Probes faulted spools so that they recover with no mail arriving, reopens the store's
        connections while a worker reports it failing (a read-only open stays read-only), and
        sets the gauges that say so."""
        for name, spool in self._spools.items():
            if spool.fault and await spool.probe():
                log.warning("spool writable again", extra={"spool": name})
            self._metrics.spool_up.labels(name).set(0 if spool.fault or not spool.healthy else 1)
        if store_failing(self._workers.values()) and self._store is not None:
            self._store.reconnect()
        for queue, worker in self._workers.items():
            for kind in ("spool", "store", "disk"):
                self._metrics.storage_fault.labels(queue, kind).set(int(kind in worker.faults))

    async def _export_stats(self) -> None:
        while True:
            await self._check_storage()
            for queue in QUEUES:
                try:
                    stats = await self._spools[queue.spool].stats(queue.name)
                except sqlite3.Error:
                    continue  # the fault is the spool's, reported by its gauge and /healthz
                for state, depth in stats.depth.items():
                    self._metrics.spool_messages.labels(queue.name, state).set(depth)
                    self._metrics.spool_oldest.labels(queue.name, state).set(stats.oldest_age[state])
            for name, spool in self._spools.items():
                commits, operations = spool.commit_groups
                seen_commits, seen_operations = self._commits_seen.get(name, (0, 0))
                self._metrics.spool_commits.labels(name).inc(commits - seen_commits)
                self._metrics.spool_operations.labels(name).inc(operations - seen_operations)
                self._commits_seen[name] = (commits, operations)
            assert self._store is not None
            now = time.time()
            try:
                open_cases = await asyncio.to_thread(self._store.open_cases)
            except (StoreUnavailable, sqlite3.Error) as exc:
                if not self._store_problem:
                    log.error("store unreachable: mail waits in the spool", extra={"error": str(exc)})
                self._store_problem = str(exc)
                self._metrics.store_up.set(0)
                await asyncio.sleep(_STATS_INTERVAL)
                continue
            if self._store_problem:
                log.warning("store reachable again")
            self._store_problem = ""
            self._metrics.store_up.set(0 if store_failing(self._workers.values()) else 1)
            for level in LEVELS:  # a level whose last open case was answered drops to 0
                count, oldest = open_cases.get(level, (0, now))
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
            if not self._fatal():
                self._notifier.watchdog()
            await asyncio.sleep(interval)


# The spool's committer and the Maildir writers are threads. With CPython's default 5 ms GIL
# switch interval, a commit that finished waits for the busy event loop to yield, and every SMTP
# client waits with it; 0.5 ms cut the time from end of DATA to 250 by half (bench/ingest.py).
_GIL_SWITCH_INTERVAL = 0.0005
# Replies' DKIM signatures: two at once on two cores (OpenSSL signs without the GIL); on the
# default executor's six threads they cost 25-45 µs more CPU per reply (mailpipe/offload.py).
SIGNING_THREADS = 2


def serve(config_path: Path | None) -> int:
    config = configuration.load(config_path)
    logs.setup(config.log_level)
    auth.configure_resolver([(ns.host, ns.port) for ns in config.auth.nameservers], cache=True)
    sys.setswitchinterval(_GIL_SWITCH_INTERVAL)
    started = time.monotonic()
    code = asyncio.run(Daemon(config, config_path).run())
    log.info("exit", extra={"uptime": round(time.monotonic() - started, 1)})
    return code
