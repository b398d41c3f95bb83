"""Escalation and cover never fail silently, end to end: a fallback goes to the lead in the
documented order and says so in the header, the card, the log and the metrics; check-config
warns about tiers rules escalate to that have no agent."""

from __future__ import annotations

import subprocess
import sys

from tests.test_delivery import wait_until
from tests.test_lifecycle import metrics
from tests.test_triage_pipeline import ALWAYS, mailbox, send, text

SUPPORT_ONLY = {"agents": [
    {"id": "yamada", "name": "山田 太郎", "address": "yamada@example.test", "phone": "03-1234-5678", **ALWAYS},
    {"id": "suzuki", "name": "鈴木 花子", "address": "suzuki@example.test", "phone": "03-1234-0000", "tier": "dev",
     **ALWAYS}],
    "desk": {"lead": "suzuki"}}


def test_an_escalation_to_a_tier_without_agents_goes_to_the_lead_and_says_so_everywhere(make_daemon) -> None:
    daemon = make_daemon(SUPPORT_ONLY)
    send(daemon, "Our account was hacked", "Someone logged into our account and sent spam.")
    (copy,) = mailbox(daemon, "suzuki")
    assert text(copy["X-Mailpipe-Escalation"]) == "tech: suzuki"
    fallback = text(copy["X-Mailpipe-Fallback"])
    assert fallback == ("escalation suzuki: FALLBACK: rule escalates to tech but no agent is in tier tech;"
                        " the lead on duty")
    (card,) = mailbox(daemon, "suzuki", cards=True)
    assert "FALLBACK: rule escalates to tech" in card.get_payload(decode=True).decode()
    # Counted once the hand-off is done, which is after the mail is in the mailbox.
    wait_until(lambda: metrics(daemon).get(("mailpipe_assignment_fallbacks_total", (("kind", "escalation"),))) == 1,
               timeout=60)
    assert "assignment fallback" in daemon.log() and "no agent is in tier tech" in daemon.log()


def test_a_fallback_repeated_on_every_message_is_warned_once_and_logged_each_time(make_daemon) -> None:
    # A desk whose escalation tier is empty (or off duty all night) falls back on every message:
    # one warning for the operator, an information line for each message.
    daemon = make_daemon(SUPPORT_ONLY)
    for n in range(3):
        send(daemon, f"Our account was hacked ({n})", "Someone logged into our account and sent spam.",
             sender=f"customer{n}@example.org")
    wait_until(lambda: metrics(daemon).get(("mailpipe_assignment_fallbacks_total", (("kind", "escalation"),))) == 3,
               timeout=60)
    lines = [line for line in daemon.log().splitlines() if 'event="assignment fallback"' in line]
    assert len(lines) == 3
    assert ["level=warning" in line for line in lines] == [True, False, False]
    assert all("no agent is in tier tech" in line for line in lines)


def test_an_away_owners_mail_goes_to_the_lead_when_no_teammate_is_on_duty(make_daemon) -> None:
    daemon = make_daemon(SUPPORT_ONLY)
    send(daemon, "Question", "How do I add a user?")
    mailbox(daemon, "yamada")
    subprocess.run([sys.executable, "-m", "mailpipe", "agents", "away", "yamada", "--config",
                    str(daemon.config_path)], check=True, capture_output=True)
    send(daemon, "Re: [#1] Question", "And a second user?")
    (covered,) = mailbox(daemon, "suzuki")
    assert text(covered["X-Mailpipe-Owner"]).split()[0] == "yamada"
    assert "FALLBACK: owner yamada is away" in text(covered["X-Mailpipe-Fallback"])
    wait_until(lambda: metrics(daemon).get(("mailpipe_assignment_fallbacks_total", (("kind", "cover"),))) == 1,
               timeout=60)


def test_check_config_warns_about_a_tier_rules_escalate_to_that_has_no_agent(make_daemon) -> None:
    daemon = make_daemon(SUPPORT_ONLY, start=False)
    daemon.write_config()
    checked = subprocess.run([sys.executable, "-m", "mailpipe", "check-config", str(daemon.config_path)],
                             capture_output=True, text=True)
    assert checked.returncode == 0
    assert "warning: rules escalate to tier 'tech' but no agent is in it: such mail falls back to the lead" \
           " 'suzuki'" in checked.stderr
