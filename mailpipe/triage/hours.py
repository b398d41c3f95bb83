"""Business hours in the support desk's own time zone, for rules about nobody looking."""

from __future__ import annotations

from datetime import datetime, time
from zoneinfo import ZoneInfo

from mailpipe.config import WEEKDAYS, TriageConfig


def within_business_hours(moment: datetime, settings: TriageConfig) -> bool:
    local = moment.astimezone(ZoneInfo(settings.timezone))
    if WEEKDAYS[local.weekday()] not in settings.business_days:
        return False
    start_text, end_text = settings.business_hours.split("-")
    start = time.fromisoformat(start_text)
    end = time.max if end_text == "24:00" else time.fromisoformat(end_text)
    return start <= local.time() < end
