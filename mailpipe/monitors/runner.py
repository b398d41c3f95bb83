"""The periodic deliverability checks inside the daemon, exported as gauges.

Every ``dns_interval`` the DNS checks of each sending domain run in a thread (dnspython and
pyspf are synchronous); every few seconds the provider profiles are evaluated again over the
latest DNS results and the traffic facts, so a profile edited and reloaded, or a provider's
first non-TLS delivery, shows within seconds. A reload replaces the settings and runs
everything at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mailpipe import auth
from mailpipe.keys import SigningKey
from mailpipe.metrics import Metrics
from mailpipe.monitors import dns_checks, profiles
from mailpipe.monitors.incidents import Incidents
from mailpipe.monitors.traffic import Traffic
from mailpipe.store import DmarcStore, DmarcSummary, StoreUnavailable

log = logging.getLogger("mailpipe.monitors")

_EVALUATE_EVERY = 5.0
_DMARC_WINDOW = 7 * 86400
_DMARC_TOP_SOURCES = 20  # per reporter; the rest are summed as source_ip="other"


@dataclass(frozen=True)
class MonitorSettings:
    domains: tuple[str, ...]
    sending_ips: tuple[str, ...]
    keys: tuple[SigningKey, ...]
    helo: str
    interval: float
    profiles: tuple[profiles.Profile, ...]
    bulk: bool


class Monitors:
    def __init__(self, settings: MonitorSettings, traffic: Traffic, metrics: Metrics, store: DmarcStore,
                 incidents: Incidents | None = None):
        self.settings = settings
        self.incidents = incidents
        self.traffic = traffic
        self.metrics = metrics
        self.store = store
        self._dmarc_series: set[tuple[str, str]] = set()
        self.reports: dict[str, dns_checks.Report] = {}
        self._wake = asyncio.Event()
        self._exported: set[tuple[str, str]] = set()
        self._failing: dict[tuple[str, str], str] = {}  # logged once when a check starts failing
        self._skipped: set[str] = set()  # domains no receiver looks up, said once
        self._requirements: set[tuple[str, str]] = set()
        self._listed: set[tuple[str, str]] = set()

    def reconfigure(self, settings: MonitorSettings) -> None:
        self.settings = settings
        self._wake.set()

    async def run(self) -> None:
        next_dns = 0.0
        while True:
            self._wake.clear()
            if time.monotonic() >= next_dns or not self.reports:
                await self.check_dns()
                next_dns = time.monotonic() + self.settings.interval
            self.evaluate()
            await self.export_dmarc()
            if self.incidents is not None:
                await asyncio.to_thread(self.incidents.end_quiet)
            try:
                await asyncio.wait_for(self._wake.wait(), _EVALUATE_EVERY)
                next_dns = 0.0  # reconfigured: check everything again now
            except TimeoutError:
                pass

    async def check_dns(self) -> None:
        """Each failure is logged when it starts (or its detail changes) and each recovery once:
        not again every ``dns_interval``. A DNS server that does not answer is one line per domain."""
        settings = self.settings
        skipped = [d for d in settings.domains if dns_checks.not_public(d) and d not in self._skipped]
        self._skipped.update(skipped)
        if skipped:
            log.info("dns checks skipped", extra={"domains": ",".join(skipped), "reason": "not a public domain:"
                                                  " set inbound.addresses or monitors.domains to your own"})
        reports = await asyncio.to_thread(self._check_all, settings)
        self.reports = reports
        seen = set()
        failing: dict[tuple[str, str], str] = {}
        for domain, report in reports.items():
            for check in report.checks:
                self.metrics.dns_check_ok.labels(domain, check.name).set(1 if check.ok else 0)
                seen.add((domain, check.name))
                if not check.ok:
                    failing[(domain, check.name)] = check.detail
                    if self._failing.get((domain, check.name)) != check.detail:
                        log.warning("dns check failed", extra={"domain": domain, "check": check.name,
                                                               "detail": check.detail, "fix": check.fix})
        for domain, name in self._failing.keys() - failing.keys():
            if (domain, name) in seen:
                log.info("dns check passes", extra={"domain": domain, "check": name})
        self._failing = failing
        for stale in self._exported - seen:
            self.metrics.dns_check_ok.remove(*stale)
        self._exported = seen
        self.metrics.dns_checks_last_run.set_to_current_time()

    @staticmethod
    def _check_all(settings: MonitorSettings) -> dict[str, dns_checks.Report]:
        resolver = auth.fresh_resolver()
        return {domain: dns_checks.check_domain(domain, sending_ips=settings.sending_ips, keys=settings.keys,
                                                helo=settings.helo, resolver=resolver)
                for domain in settings.domains if not dns_checks.not_public(domain)}

    async def export_dmarc(self) -> None:
        try:
            summaries = await asyncio.to_thread(self.store.dmarc_summary, int(time.time()) - _DMARC_WINDOW)
        except StoreUnavailable:
            return  # the daemon reports the store's state; the gauges keep their last values
        series = dmarc_series(summaries)
        gauges = (self.metrics.dmarc_pass_ratio, self.metrics.dmarc_dkim_aligned_ratio,
                  self.metrics.dmarc_spf_aligned_ratio)
        for key, (messages, *aligned) in series.items():
            self.metrics.dmarc_messages.labels(*key).set(messages)
            for gauge, count in zip(gauges, aligned, strict=True):
                gauge.labels(*key).set(count / messages if messages else 0)
        for stale in self._dmarc_series - set(series):
            for gauge in (self.metrics.dmarc_messages, *gauges):
                gauge.remove(*stale)
        self._dmarc_series = set(series)

    def evaluate(self) -> None:
        """Export each applicable requirement as ok (1/0) or as unknown; never unknown as passed."""
        judged, listed = set(), set()
        for profile in self.settings.profiles:
            facts = self.traffic.facts(profile.provider)
            per_domain = [profiles.evaluate(profile, {**_results(report), **facts}, bulk=self.settings.bulk)
                          for report in self.reports.values()]
            for index, requirement in enumerate(r for r in profile.requirements
                                                if r.scope == "all" or self.settings.bulk):
                key = (profile.provider, requirement.id)
                verdict = profiles.combine([outcomes[index] for outcomes in per_domain])
                self.metrics.provider_requirement_unknown.labels(*key).set(int(verdict is None))
                listed.add(key)
                if verdict is not None:
                    self.metrics.provider_requirement_ok.labels(*key).set(int(verdict))
                    judged.add(key)
        for stale in self._requirements - judged:
            self.metrics.provider_requirement_ok.remove(*stale)
        for stale in self._listed - listed:
            self.metrics.provider_requirement_unknown.remove(*stale)
        self._requirements, self._listed = judged, listed


def dmarc_series(summaries: Sequence[DmarcSummary],
                 top: int = _DMARC_TOP_SOURCES) -> dict[tuple[str, str], tuple[int, int, int, int]]:
    """(reporter, source IP) -> (messages, passed, dkim aligned, spf aligned), the largest
    ``top`` sources of each reporter kept apart and the rest summed as "other"."""
    by_reporter: dict[str, list[DmarcSummary]] = {}
    for summary in summaries:
        by_reporter.setdefault(summary.reporter, []).append(summary)
    series: dict[tuple[str, str], tuple[int, int, int, int]] = {}
    for reporter, rows in by_reporter.items():
        rows.sort(key=lambda row: row.messages, reverse=True)
        for index, row in enumerate(rows):
            key = (reporter, row.source_ip if index < top else "other")
            totals = series.get(key, (0, 0, 0, 0))
            series[key] = (totals[0] + row.messages, totals[1] + row.passed, totals[2] + row.dkim_aligned,
                           totals[3] + row.spf_aligned)
    return series


def _results(report: dns_checks.Report) -> dict[str, bool]:
    return {check.name: check.ok for check in report.checks}

