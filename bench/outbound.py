"""Outbound throughput: stamp + DKIM sign + durable queueing of 5 KiB replies.

Measured in one run on this machine, side by side:
- the baseline: raw RSA-2048 PKCS#1 v1.5 / SHA-256 signatures with ``cryptography`` (OpenSSL)
  over the same bytes with the same key — what a signature costs and nothing else;
- the reply's parse as ``Replies.parse`` makes it (header fields only) beside the whole-message
  parse it made before (the ISO-2022-JP body decoded for nothing but an out-of-case footer);
- stamp alone (footer into ISO-2022-JP text and HTML alternatives);
- signing alone, as the daemon signs (dkimpy's DKIM, OpenSSL's signature): rsa-sha256,
  ed25519-sha256 and both; and dkimpy's own pure-Python RSA over the first ``--dkimpy`` replies,
  for comparison;
- issue 17's "full hand-off" as the daemon runs it (without the parse, the case lookups and the
  store's record of the reply): stamp on the event loop, sign on the daemon's signing threads
  (``mailpipe.offload``), and the durable write into the send queue (SQLite,
  synchronous=FULL, group commit), with as many messages in their stages as the worker has slots
  and their commits awaited with the slot free, as the worker awaits a hand-off that moves a
  message on; RSA alone and RSA with ed25519 (dual signing), in ``--rounds`` rounds each beside
  its own baseline.
The ratio that matters is the full RSA hand-off against OpenSSL signing alone (goal: 0.5 or more),
in msgs/s; beside it the same ratio in CPU per message, which neighbours on a shared machine
move much less. OpenSSL signs without the GIL, so on two free cores the signature overlaps the
Python work of other replies and the msgs/s ratio can exceed the CPU one.

    python bench/outbound.py [--messages 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import email.message
import email.utils
import statistics
import sys
import tempfile
import time
from email import policy
from email.header import Header
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import dkim
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from mailpipe import keys
from mailpipe.daemon import SIGNING_THREADS
from mailpipe.message import parse
from mailpipe.offload import Offload
from mailpipe.outbound import signing
from mailpipe.outbound.replies import header_fields
from mailpipe.outbound.stamp import stamp
from mailpipe.spool import Envelope, Spool

FOOTER = "このメールについてお電話でのお問い合わせは、担当 山田 太郎（03-1234-5678）までご連絡ください。"
DKIMPY_HEADERS = [b"from", b"to", b"subject", b"date", b"message-id", b"mime-version", b"content-type", b"from"]
PARAGRAPH = "お問い合わせいただいた配信遅延の件について、調査結果をご報告いたします。"


def reply(n: int, size: int = 5 * 1024) -> bytes:
    """A 5 KiB reply as a Japanese mail client sends it: ISO-2022-JP text and HTML."""
    text = ""
    while len(text.encode("iso2022_jp")) * 2 < size * 0.8:
        text += PARAGRAPH + "\n"
    message = email.message.EmailMessage(policy=policy.SMTP)
    message["From"] = f"{Header('山田 太郎', 'iso-2022-jp').encode()} <support@example.com>"
    message["To"] = f"customer{n}@example.org"
    message["Subject"] = Header(f"Re: [#{n}] 配信遅延について", "iso-2022-jp").encode()
    message["Message-ID"] = f"<bench-{n}@example.com>"
    message["Date"] = email.utils.formatdate()
    message.set_content(text.encode("iso2022_jp"), maintype="text", subtype="plain", cte="7bit",
                        params={"charset": "ISO-2022-JP"})
    html = "<html><body>" + "".join(f"<p>{line}</p>" for line in text.splitlines()) + "</body></html>"
    message.add_alternative(html.encode("iso2022_jp"), maintype="text", subtype="html", cte="7bit",
                            params={"charset": "ISO-2022-JP"})
    return message.as_bytes()


def rate(count: int, seconds: float) -> float:
    return count / seconds if seconds else float("inf")


def report(label: str, count: int, seconds: float, cpu_seconds: float) -> tuple[float, float]:
    """msgs/s and CPU microseconds per message (all threads): the CPU figure barely moves when
    neighbours take the machine's cores, the rate does."""
    value, cpu = rate(count, seconds), cpu_seconds / count * 1e6
    print(f"{label:<52} {value:>9,.0f} msgs/s {cpu:>8,.0f} µs CPU/msg")
    return value, cpu


def timed(label: str, function, items) -> tuple[float, float, list]:
    started, cpu = time.perf_counter(), time.process_time()
    out = [function(item) for item in items]
    return *report(label, len(items), time.perf_counter() - started, time.process_time() - cpu), out


async def hand_off(messages: list[bytes], signer: signing.Signer | None, spool: Spool | None,
                   in_flight: int, threads: Offload) -> None:
    """The hand-off of ``messages``, ``in_flight`` at a time in their stages; without a signer the
    durable queue alone (of messages already stamped and signed, all ready at once), without a
    spool all but the queue. The spool is opened by the caller before its clock starts, as the
    daemon opens its spool once at start (creating the file, its schema and WAL cost ~7 ms of CPU
    and ~35 ms, a fifth of a round); it is closed here, inside the clock, so the checkpoint that
    writes the round's WAL back into the file is counted, as the daemon's automatic checkpoints are."""
    slots = asyncio.Semaphore(in_flight)
    envelope = Envelope("support@example.com", ("customer@example.org",), "", "", "outbound", "yamada")

    async def one(raw: bytes) -> None:
        if signer is not None:
            async with slots:  # as Replies.stages: the stamp on the event loop, the signature on a signing thread
                stamped = stamp(raw, FOOTER, "mx.example.com", time.time())
                raw = await threads.run(signer.sign, stamped.data, "example.com")
        if spool is not None:  # as Worker._process for a route that moves_on: the slot is free
            await spool.enqueue(envelope, raw)

    await asyncio.gather(*(one(raw) for raw in messages))
    if spool is not None:
        spool.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--in-flight", type=int, default=8, help="as the worker's spool.workers")
    parser.add_argument("--dkimpy", type=int, default=100, help="replies signed by dkimpy's pure-Python RSA")
    parser.add_argument("--rounds", type=int, default=3, help="hand-off rounds, each beside its own baseline")
    args = parser.parse_args()
    messages = [reply(n) for n in range(args.messages)]
    print(f"{args.messages} replies of {sum(map(len, messages)) // len(messages):,} bytes (ISO-2022-JP text + HTML)")
    rsa_key = keys.SigningKey("example.com", "rsa", "rsa-sha256", keys.generate("rsa-sha256"))
    ed_key = keys.SigningKey("example.com", "ed", "ed25519-sha256", keys.generate("ed25519-sha256"))
    rsa, ed, dual = (signing.Signer(chosen) for chosen in ([rsa_key], [ed_key], [rsa_key, ed_key]))
    openssl_key = rsa_key.loaded
    assert isinstance(openssl_key, RSAPrivateKey)

    def openssl_alone(items: list[bytes]) -> tuple[float, float]:
        return timed("baseline: cryptography RSA-2048 PKCS1v15/SHA-256 sign",
                     lambda raw: openssl_key.sign(raw, padding.PKCS1v15(), hashes.SHA256()), items)[:2]

    stamp_rate, _, stamped = timed("stamp (footer in both alternatives)",
                                   lambda raw: stamp(raw, FOOTER, "mx", 0).data, messages)
    openssl, _ = openssl_alone(stamped)
    whole, _, _ = timed("parse the whole reply (Replies.parse before)", parse, messages)
    fields, _, _ = timed("parse its header fields (Replies.parse)", header_fields, messages)
    signed, _, signed_messages = timed("sign rsa-sha256 (dkimpy DKIM, OpenSSL signature)",
                                       lambda raw: rsa.sign(raw, "example.com"), stamped)
    timed("sign ed25519-sha256", lambda raw: ed.sign(raw, "example.com"), stamped)
    timed("sign rsa-sha256 + ed25519-sha256", lambda raw: dual.sign(raw, "example.com"), stamped)
    dkimpy, _, _ = timed("dkimpy's own pure-Python rsa-sha256 sign", lambda raw: dkim.DKIM(raw).sign(
        b"rsa", b"example.com", rsa_key.private_key, include_headers=DKIMPY_HEADERS), stamped[:args.dkimpy])
    for label, value in (("whole parse", whole), ("header fields parse", fields), ("stamp alone", stamp_rate),
                         ("rsa signing alone", signed), ("dkimpy's own rsa", dkimpy)):
        print(f"{label + ' / cryptography rsa signing alone':<52} {value / openssl:>9.2f}")

    ratios: dict[str, list[tuple[float, float]]] = {"rsa": [], "rsa & ed25519": []}
    threads = Offload("dkim-sign", SIGNING_THREADS)
    with tempfile.TemporaryDirectory(prefix="mailpipe-bench-") as directory:
        for round_ in range(args.rounds):
            print(f"round {round_ + 1}: the hand-off beside OpenSSL signing alone, measured just before it")
            for label, signer in (("rsa", rsa), ("rsa & ed25519", dual)):
                openssl, openssl_cpu = openssl_alone(stamped)
                spool = Spool(Path(directory) / f"{round_}-{len(ratios[label])}-{label[-3:]}.sqlite")
                started, cpu = time.perf_counter(), time.process_time()
                asyncio.run(hand_off(messages, signer, spool, args.in_flight, threads))
                full, full_cpu = report(f"stamp + {label} sign + durable queue", len(messages),
                                        time.perf_counter() - started, time.process_time() - cpu)
                ratios[label].append((full / openssl, openssl_cpu / full_cpu))
            for label, signer, queued in (("  of which stamp + rsa sign (no queue)", rsa, False),
                                          ("  of which durable queue alone", None, True)):
                spool = Spool(Path(directory) / f"{round_}-queue.sqlite") if queued else None
                started, cpu = time.perf_counter(), time.process_time()
                asyncio.run(hand_off(signed_messages if signer is None else messages, signer, spool, args.in_flight,
                                     threads))
                report(label, len(messages), time.perf_counter() - started, time.process_time() - cpu)
    threads.close()
    for label, values in ratios.items():
        for kind, index in (("msgs/s", 0), ("CPU/msg", 1)):
            value = statistics.median(v[index] for v in values)
            print(f"{'full hand-off (' + label + ') / OpenSSL alone, ' + kind:<52} {value:>9.2f}"
                  f"  (median; rounds: {', '.join(f'{v[index]:.2f}' for v in values)})")


if __name__ == "__main__":
    main()
