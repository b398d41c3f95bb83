"""The lead's digest: a mail to the desk's lead at set times with what needs a lead's eye.

Unanswered critical and high cases with their age and owner, each agent's open load, replies
that bounced since the last digest, and agents' urgency corrections since then
(``urgency+LEVEL@``). Plain UTF-8 text, Japanese or English (``desk.digest_language``),
readable in any client; times in the desk's time zone. ``compose`` is pure but for the store reads;
``Digests.run`` is the daemon's task: at each of ``desk.digest_times`` (``HH:MM``, desk time)
it files one digest in the lead's mailbox. The moment of the last digest is kept in the state
directory (``digest.last``), so a restart neither repeats a digest nor forgets what "since the
last digest" means; a time missed while the daemon was down is sent once at start.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

from mailpipe.config import Config
from mailpipe.deliver import Deliverer, notice
from mailpipe.errors import StoreUnavailable, TemporaryFailure
from mailpipe.spool import Entry, Envelope, Message
from mailpipe.store import Store
from mailpipe.triage.hours import desk_time

log = logging.getLogger("mailpipe.digest")

_CHECK_EVERY = 20.0
_WORDS = {
    "ja": {"subject": "[mailpipe] 本日の状況", "unanswered": "未回答の緊急・高優先度ケース", "none": "なし",
           "load": "担当者ごとの対応中ケース数", "bounced": "前回以降に届かなかった返信",
           "corrections": "前回以降の緊急度の修正", "since": "前回", "age": "経過", "owner": "担当"},
    "en": {"subject": "[mailpipe] desk digest", "unanswered": "Unanswered critical and high cases", "none": "none",
           "load": "Open cases per agent", "bounced": "Replies that bounced since the last digest",
           "corrections": "Urgency corrections since the last digest", "since": "since", "age": "age",
           "owner": "owner"},
}


def due(now: datetime, times: tuple[str, ...], last: float) -> datetime | None:
    """The latest scheduled moment at or before ``now`` (desk time) that came after ``last``."""
    slots = []
    for day in (now.date() - timedelta(days=1), now.date()):
        for moment in times:
            hour, minute = (int(part) for part in moment.split(":"))
            slots.append(datetime(day.year, day.month, day.day, hour, minute, tzinfo=now.tzinfo))
    passed = [slot for slot in slots if slot <= now and slot.timestamp() > last]
    return max(passed) if passed else None


def _age(seconds: float) -> str:
    hours, minutes = divmod(int(seconds // 60), 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m"


def compose(store: Store, config: Config, now: float, since: float) -> tuple[str, str]:
    """(subject, body) of the digest for ``now``, covering what happened after ``since``."""
    words = _WORDS[config.desk.digest_language]
    zone = config.triage.timezone
    names = {agent.id: agent.name for agent in config.agents}
    urgent = [c for c in store.cases("open", 1000) if c.level in ("critical", "high")]
    urgent.sort(key=lambda c: (c.level != "critical", c.opened_at))
    lines = [f"{words['subject']} — {desk_time(now, zone)}", f"({words['since']}: {desk_time(since, zone)})", "",
             f"■ {words['unanswered']} ({len(urgent)})"]
    lines += [f"  #{c.id} {c.level:<8} {words['age']} {_age(now - c.opened_at):>7}  {words['owner']} "
              f"{c.owner} {names.get(c.owner, '')}  {c.subject}" for c in urgent] or [f"  {words['none']}"]
    load = store.open_load()
    lines += ["", f"■ {words['load']}"]
    lines += [f"  {agent.id:<12} {load.get(agent.id, 0):>4}  {agent.name}" for agent in config.agents]
    bounced = store.bounced_since(since)
    lines += ["", f"■ {words['bounced']} ({len(bounced)})"]
    lines += [f"  #{r.case_id} {desk_time(r.at, zone)} {r.agent}: {r.detail}" for r in bounced] or [
        f"  {words['none']}"]
    corrections = store.corrections_since(since)
    lines += ["", f"■ {words['corrections']} ({len(corrections)})"]
    lines += [f"  #{c.case_id} {desk_time(c.at, zone)} {c.from_level} → {c.to_level} ({c.author})"
              for c in corrections] or [f"  {words['none']}"]
    return f"{words['subject']} {desk_time(now, zone, '%Y-%m-%d %H:%M')}", "\n".join(lines) + "\n"


class Digests:
    """The daemon's digest task; ``config`` is read at each check, so a reload takes effect."""

    def __init__(self, config: Callable[[], Config], store: Store, mailboxes: Callable[[], Deliverer],
                 clock: Callable[[], float] = time.time):
        self._config = config
        self._store = store
        self._mailboxes = mailboxes
        self._clock = clock

    async def run(self) -> None:
        while True:
            try:
                await self.send_if_due()
            except (StoreUnavailable, TemporaryFailure, OSError) as exc:
                log.warning("digest postponed", extra={"error": str(exc)})
            await asyncio.sleep(_CHECK_EVERY)

    async def send_if_due(self) -> bool:
        config = self._config()
        lead = next((a for a in config.agents if a.id == config.desk.lead), None)
        if lead is None or not config.desk.digest_times:
            return False
        marker = config.state_path / "digest.last"
        now = self._clock()
        last = _read_last(marker)
        if last is None:
            _write_last(marker, now)  # the first start: the next scheduled time is the first digest
            return False
        slot = due(datetime.fromtimestamp(now, ZoneInfo(config.triage.timezone)), config.desk.digest_times, last)
        if slot is None:
            return False
        subject, body = await asyncio.to_thread(compose, self._store, config, now, last)
        queue_id = f"digest-{int(slot.timestamp())}"
        data = notice.compose(hostname=config.inbound.hostname, to=lead.address, subject=subject, body=body,
                              message_id=f"{queue_id}@{config.inbound.hostname}", about=(), at=now)
        envelope = Envelope("", (lead.address,), "", "", "digest")
        # Named by the slot, so a crash before the marker is written files the same digest again, once.
        message = Message(Entry(queue_id, "active", envelope, slot.timestamp(), len(data), 0, 0, 1, 0.0, ""), data)
        await self._mailboxes().deliver(lead, [(message, data)])
        _write_last(marker, now)
        log.info("digest sent", extra={"agent": lead.id, "slot": slot.isoformat()})
        return True


def _read_last(marker: Path) -> float | None:
    try:
        return float(marker.read_text().strip())
    except (OSError, ValueError):
        return None


def _write_last(marker: Path, at: float) -> None:
    """Write, fsync, rename: a crash leaves the old moment or the new one, never half of one."""
    marker.parent.mkdir(parents=True, exist_ok=True)
    temporary = marker.with_suffix(".tmp")
    with temporary.open("w") as handle:
        handle.write(f"{at}\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, marker)
