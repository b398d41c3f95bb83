"""Durable SMTP intake: mailpipe beside the protocol ceiling, bare aiosmtpd and Postfix.

Postfix's own load generator, ``smtp-source -s SESSIONS -l SIZE -m MESSAGES``, drives each
server in turn on loopback, a new connection per message, while a probe sends one message at
a time over its own connection and times end of DATA to the reply. Servers:

- ``smtp-sink``: Postfix's protocol ceiling, stores nothing;
- ``bare-aiosmtpd``: aiosmtpd answering 250 without storing (bench/bare_aiosmtpd.py);
- ``postfix``: a private Postfix instance, smtpd → cleanup → a queue file fsync'ed to disk
  (mail is put on hold so no delivery competes);
- ``mailpipe-intake``: the real daemon with hand-offs paused (``spool.workers = 0``): durable
  intake alone, what Postfix's column measures too;
- ``mailpipe``: the real daemon, spool fsync'ed before 250, triaging (SPF/DKIM/DMARC through a
  local unbound, rules, store) and delivering to Maildir meanwhile.

Prints messages/s and probe p50/p99 for each, then mailpipe/bare-aiosmtpd and mailpipe/postfix.
Needs root (Postfix runs as its own user) and the Debian packages postfix and swaks' peers;
`make bench` installs them. This is a measurement, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from mailpipe.daemon import TRIAGING  # noqa: E402
from tests.dns_peer import Unbound, zones_for_tests  # noqa: E402
from tests.peers import listening  # noqa: E402

RECIPIENT = "support@localhost"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serving(command: list[str], port: int, log: Path | None = None, ready: Callable[[], None] | None = None,
            environment: dict[str, str] | None = None) -> Iterator[int]:
    """A server process listening on ``port`` (and past ``ready``) for the duration of the block;
    output to ``log``; ``environment`` added to ours."""
    with (log.open("wb") if log else open(os.devnull, "wb")) as output:
        process = subprocess.Popen(command, stdout=output, stderr=output, env={**os.environ, **(environment or {})})
        try:
            listening(port, 90, command[0])
            if ready is not None:
                ready()
            yield port
        finally:
            process.terminate()
            process.wait()


def smtp_sink(work: Path) -> AbstractContextManager[int]:
    port = free_port()
    return serving(["smtp-sink", "-u", "nobody", f"127.0.0.1:{port}", "1024"], port)


def bare_aiosmtpd(work: Path) -> AbstractContextManager[int]:
    port = free_port()
    return serving([sys.executable, str(HERE / "bare_aiosmtpd.py"), str(port)], port)


@contextmanager
def postfix(work: Path) -> Iterator[int]:
    port = free_port()
    conf, queue = work / "postfix-conf", work / "postfix-queue"
    conf.mkdir()
    queue.mkdir()
    (work / "postfix-data").mkdir()
    shutil.chown(work / "postfix-data", "postfix")
    (conf / "main.cf").write_text(f"""compatibility_level = 3.6
queue_directory = {queue}
data_directory = {work / "postfix-data"}
mail_owner = postfix
setgid_group = postdrop
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = bench.localhost
mydestination = localhost
local_recipient_maps =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_client_restrictions = check_client_access static:HOLD
smtpd_client_connection_count_limit = 0
smtpd_client_connection_rate_limit = 0
maillog_file = {work / "postfix.log"}
maillog_file_prefixes = {work}
""")
    services = ["cleanup unix n - n - 0 cleanup", "qmgr unix n - n 300 1 qmgr",
                "rewrite unix - - n - - trivial-rewrite", "bounce unix - - n - 0 bounce",
                "defer unix - - n - 0 bounce", "trace unix - - n - 0 bounce", "verify unix - - n - 1 verify",
                "proxymap unix - - n - - proxymap", "anvil unix - - n - 1 anvil",
                "tlsmgr unix - - n 1000? 1 tlsmgr", "postlog unix-dgram n - n - 1 postlogd"]
    (conf / "master.cf").write_text(f"127.0.0.1:{port} inet n - n - 100 smtpd\n" + "\n".join(services) + "\n")
    started = subprocess.run(["postfix", "-c", str(conf), "start"], capture_output=True, text=True)
    if started.returncode != 0:
        log = (work / "postfix.log").read_text() if (work / "postfix.log").exists() else ""
        raise RuntimeError(f"postfix did not start: {started.stdout}{started.stderr}{log}")
    try:
        listening(port, 90, "postfix")
        yield port
    finally:
        subprocess.run(["postfix", "-c", str(conf), "stop"], capture_output=True)


@contextmanager
def mailpipe(work: Path, workers: int = 8) -> Iterator[int]:
    """The daemon, resolving through a local unbound (as a production MX has a local resolver)."""
    dns_server = Unbound(zones_for_tests())
    try:
        with _mailpipe(work, workers, dns_server.address) as port:
            yield port
    finally:
        dns_server.stop()


def _mailpipe(work: Path, workers: int, nameserver: str) -> AbstractContextManager[int]:
    port, metrics = free_port(), free_port()
    state = work / "mailpipe-state"
    config = work / "mailpipe.toml"
    config.write_text(f'state_directory = "{state}"\n[inbound]\nlisten = "127.0.0.1:{port}"\n'
                      f'max_connections = 1000\nmax_connections_per_ip = 1000\n'
                      f'[metrics]\nlisten = "127.0.0.1:{metrics}"\n[spool]\nworkers = {workers}\n'
                      f'[submission]\nlisten = "127.0.0.1:{free_port()}"\n'  # 2587 may be another daemon's
                      f'[auth]\nnameservers = ["{nameserver}"]\n')
    return serving_mailpipe(config, port, work / "mailpipe.log")


@contextmanager
def serving_mailpipe(config: Path, port: int, log: Path) -> Iterator[int]:
    """``mailpipe serve`` on ``config``, once it triages: it listens at once and fits its urgency
    model after, which its sd_notify status tells (as systemd hears it)."""
    with tempfile.TemporaryDirectory() as sockets, socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(f"{sockets}/notify")
        notify.settimeout(300)  # fitting the model: seconds of CPU, more on a busy machine

        def triaging() -> None:
            while not any(state.endswith(TRIAGING) for state in notify.recv(4096).decode().split("\n")):
                pass

        command = [sys.executable, "-m", "mailpipe", "serve", "--config", str(config)]
        with serving(command, port, log, triaging, {"NOTIFY_SOCKET": f"{sockets}/notify"}):
            yield port


@dataclass
class Result:
    name: str
    rate: float
    p50_ms: float
    p99_ms: float


def probe(port: int, stop: threading.Event, samples: list[float]) -> None:
    """One message at a time on one connection; times the last DATA bytes to the reply."""
    body = b"Subject: probe\r\n\r\n" + (b"x" * 76 + b"\r\n") * 66 + b".\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        reader = sock.makefile("rb")

        def command(line: bytes) -> bytes:
            sock.sendall(line)
            reply = reader.readline()
            while reply[3:4] == b"-":
                reply = reader.readline()
            return reply

        reader.readline()
        command(b"EHLO probe\r\n")
        while not stop.is_set():
            command(b"MAIL FROM:<probe@example.org>\r\n")
            command(f"RCPT TO:<{RECIPIENT}>\r\n".encode())
            command(b"DATA\r\n")
            started = time.perf_counter()
            reply = command(body)
            if reply.startswith(b"250"):
                samples.append(time.perf_counter() - started)
            time.sleep(0.01)


def measure(name: str, server: Callable[[Path], AbstractContextManager[int]], args: argparse.Namespace) -> Result:
    with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)
        with server(work) as port:
            subprocess.run(["smtp-source", "-s", "5", "-l", str(args.size), "-m", "200", "-f", "bench@example.org",
                            "-t", RECIPIENT, f"127.0.0.1:{port}"], check=True)
            stop, samples = threading.Event(), []
            prober = threading.Thread(target=probe, args=(port, stop, samples))
            prober.start()
            started = time.perf_counter()
            subprocess.run(["smtp-source", "-s", str(args.sessions), "-l", str(args.size), "-m", str(args.messages),
                            "-f", "bench@example.org", "-t", RECIPIENT, f"127.0.0.1:{port}"], check=True)
            elapsed = time.perf_counter() - started
            stop.set()
            prober.join()
    cuts = statistics.quantiles(samples, n=100) if len(samples) >= 2 else [float("nan")] * 99
    return Result(name, args.messages / elapsed, cuts[49] * 1000, cuts[98] * 1000)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=5120)
    args = parser.parse_args()
    missing = [tool for tool in ("smtp-source", "smtp-sink", "postfix") if shutil.which(tool) is None]
    if missing or os.geteuid() != 0:
        print(f"bench/ingest needs root and Postfix's tools (missing: {', '.join(missing) or 'root'})")
        return 1
    servers = {"smtp-sink": smtp_sink, "bare-aiosmtpd": bare_aiosmtpd, "postfix": postfix,
               "mailpipe-intake": partial(mailpipe, workers=0), "mailpipe": mailpipe}
    results = {}
    print(f"smtp-source -s {args.sessions} -l {args.size} -m {args.messages}, new connection per message; "
          f"{os.cpu_count()} CPUs")
    print(f"{'server':<15} {'msgs/s':>9} {'p50 ms':>8} {'p99 ms':>8}   (p50/p99: end of DATA to reply, probe)")
    for name, server in servers.items():
        result = results[name] = measure(name, server, args)
        print(f"{name:<15} {result.rate:>9.0f} {result.p50_ms:>8.2f} {result.p99_ms:>8.2f}", flush=True)
    for ours in ("mailpipe-intake", "mailpipe"):
        for baseline in ("bare-aiosmtpd", "postfix", "smtp-sink"):
            print(f"{ours + ' / ' + baseline:<32} = {results[ours].rate / results[baseline].rate:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
