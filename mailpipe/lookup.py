"""Who is calling: a customer found by phone number, with what an agent picking up needs.

``caller`` is what ``GET /customers?phone=…`` on the operator's HTTP listener answers (a phone
system's caller-ID screen-pop) and what ``mailpipe customers show PHONE`` prints: each customer
with that number (``phones.key``: however it was written), the owner with their phone, open
cases with their urgency levels, and the latest note (a call, a bounce). Reads the store;
the caller runs it in a thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mailpipe import phones
from mailpipe.config import Agent
from mailpipe.store import Store


def caller(store: Store, agents: Sequence[Agent], phone: str) -> dict[str, Any]:
    by_id = {agent.id: agent for agent in agents}
    found = []
    for customer in store.customers_by_phone(phone):
        owner = by_id.get(customer.owner)
        cases = [c for c in store.cases_of(customer.id, 50) if c.status != "closed"]
        notes = [note for case in cases for note in store.case_notes(case.id)]
        last = max(notes, key=lambda note: note.at, default=None)
        found.append({
            "address": customer.address, "name": customer.name, "company": customer.company, "plan": customer.plan,
            "vip": customer.vip, "phone": customer.phone,
            "owner": {"id": owner.id, "name": owner.name, "phone": owner.phone} if owner else
            ({"id": customer.owner, "name": "", "phone": ""} if customer.owner else None),
            "open_cases": [{"id": c.id, "status": c.status, "level": c.level, "subject": c.subject,
                            "opened_at": c.opened_at} for c in cases],
            "last_note": {"case": last.case_id, "kind": last.kind, "text": last.text, "at": last.at} if last else None,
        })
    return {"phone": phones.key(phone), "customers": found}
