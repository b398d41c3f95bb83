"""Business hours and agents' duty hours, in the support desk's own time zone."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

from mailpipe.config import WEEKDAYS, Agent, TriageConfig


def within_business_hours(moment: datetime, settings: TriageConfig) -> bool:
    return within(moment, settings.timezone, settings.business_days, settings.business_hours)


def on_duty(agent: Agent, moment: datetime, settings: TriageConfig) -> bool:
    return within(moment, settings.timezone, agent.days or settings.business_days,
                  agent.hours or settings.business_hours)


def within(moment: datetime, zone: str, days: tuple[str, ...], hours: str) -> bool:
    local = moment.astimezone(ZoneInfo(zone))
    if WEEKDAYS[local.weekday()] not in days:
        return False
    start_text, end_text = hours.split("-")
    start = time.fromisoformat(start_text)
    end = time.max if end_text == "24:00" else time.fromisoformat(end_text)
    return start <= local.time() < end


def desk_time(at: float, zone: str, fmt: str = "%Y-%m-%d %H:%M %Z") -> str:
    """A moment as the desk's clock shows it (``2026-11-30 09:05 JST``), for what agents read:
    notes, cards, the lead's digest."""
    return datetime.fromtimestamp(at, ZoneInfo(zone)).strftime(fmt)
