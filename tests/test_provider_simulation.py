"""Detection of a provider's rule change, end to end, against a simulated Gmail built from real
parts (unbound, an SMTP server judging with pyspf/dkimpy, Dovecot for the seed mailbox).

The run starts healthy: probes land in the seed's INBOX. Then the domain's DKIM key is rotated
out of DNS while Gmail files unauthenticated bulk mail in Junk: the probes say "spam". Then
Gmail starts refusing such mail with 550 5.7.26: a customer reply is refused, and the alert
expression on authentication refusals becomes true. Each detection time is measured and
printed (`pytest -s tests/test_provider_simulation.py`) against the goal: within two probe
intervals, or within one minute of the first refused message.
"""

from __future__ import annotations

import time
from pathlib import Path

import dns.resolver
import pytest

from mailpipe import auth
from tests.dns_peer import ED25519_SEED, Unbound, dkim_private_key, without_dkim, zones_for_tests
from tests.dovecot_peer import Dovecot
from tests.provider_sim import ProviderSimulator
from tests.test_lifecycle import metrics
from tests.test_outbound import PASSWORD, submit

PROBE_INTERVAL = 4.0
SEED = "seed@gmail.test"


def wait_for(condition, timeout: float, poll: float = 0.25) -> float:
    """Seconds until ``condition()`` holds."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < timeout, "not detected in time"
        time.sleep(poll)
    return time.monotonic() - started


@pytest.fixture
def gmail(tmp_path: Path):
    zones = zones_for_tests()
    dns_server = Unbound(zones)
    dovecot = Dovecot({SEED: "seed password"})
    simulator = ProviderSimulator(dovecot, {SEED: SEED})
    previous = dns.resolver.default_resolver
    auth.configure_resolver([("127.0.0.1", dns_server.port)])  # the simulator judges through the test zones
    world = {"dns": dns_server, "zones": zones, "dovecot": dovecot, "simulator": simulator}
    yield world
    dns.resolver.default_resolver = previous
    simulator.stop()
    dovecot.stop()
    world["dns"].stop()


def test_a_provider_rule_change_is_detected_by_probes_and_by_the_first_refused_reply(make_daemon, gmail,
                                                                                     tmp_path: Path) -> None:
    rsa_key, ed_key = tmp_path / "sel.key", tmp_path / "ed.key"
    rsa_key.write_bytes(dkim_private_key())
    ed_key.write_text(ED25519_SEED)
    seed = {"provider": "gmail", "address": SEED, "imap_host": "127.0.0.1", "imap_port": gmail["dovecot"].port,
            "imap_security": "none", "username": SEED, "password": "seed password", "spam": "Junk"}
    daemon = make_daemon({
        "auth": {"nameservers": [f"127.0.0.1:{gmail['dns'].port}"]},
        "outbound": {"remote_port": gmail["simulator"].port, "autoreply": False, "retry_initial": "1s",
                     "retry_max": "2s"},
        "dkim": [{"domain": "example.test", "selector": "sel", "key_file": str(rsa_key)},
                 {"domain": "example.test", "selector": "ed", "key_file": str(ed_key),
                  "algorithm": "ed25519-sha256"}],
        "monitors": {"seeds": [seed], "probe_interval": f"{PROBE_INTERVAL}s", "probe_poll": "0.5s",
                     "probe_timeout": "20s", "dns_interval": "1h"},
    }, start=False)
    daemon.give_passwords(PASSWORD, ("yamada",))
    daemon.start()

    def placed(result: str) -> bool:
        return metrics(daemon).get(("mailpipe_probe_last_placement", (("provider", "google"), ("result", result)))) == 1

    wait_for(lambda: placed("inbox"), timeout=30)
    assert metrics(daemon)[("mailpipe_probe_auth_pass", (("method", "dkim"), ("provider", "google")))] == 1

    # Gmail starts junking unauthenticated bulk mail, and our DKIM key leaves DNS.
    gmail["simulator"].policy = "junk"
    port = gmail["dns"].port
    gmail["dns"].stop()
    gmail["dns"] = Unbound(without_dkim(gmail["zones"]), port=port)
    probe_detection = wait_for(lambda: placed("spam"), timeout=4 * PROBE_INTERVAL + 10)
    assert metrics(daemon)[("mailpipe_probe_auth_pass", (("method", "dkim"), ("provider", "google")))] == 0

    # Then Gmail refuses such mail outright; the next customer reply is refused.
    gmail["simulator"].policy = "reject"
    authentication = ("mailpipe_outbound_replies_total", (("class", "authentication"), ("provider", "google")))
    before = metrics(daemon).get(authentication, 0)
    switched = time.time()
    submit(daemon, b"From: support@example.test\r\nTo: customer@gmail.test\r\nSubject: Re: [#1] help\r\n\r\nHi\r\n",
           rcpts=("customer@gmail.test",))
    # The alert expression: increase(mailpipe_outbound_replies_total{class="authentication"}[10m]) > 0.
    wait_for(lambda: metrics(daemon).get(authentication, 0) > before, timeout=60)
    first_refusal = gmail["simulator"].rejected_at[0]
    reply_detection = time.time() - first_refusal
    print(f"\ndetection: probes {probe_detection:.1f} s after the change (probe interval {PROBE_INTERVAL:g} s, "
          f"goal {2 * PROBE_INTERVAL:g} s); live reply {reply_detection:.2f} s after the first refusal, "
          f"{time.time() - switched:.2f} s after the switch (goal 60 s)")
    assert probe_detection <= 2 * PROBE_INTERVAL + 2  # + the IMAP poll interval and scrape granularity
    assert reply_detection <= 60
