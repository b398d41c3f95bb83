"""The operator's HTTP endpoint: ``/metrics`` for Prometheus and ``/healthz`` for probes.

A few lines of asyncio instead of a web framework: two GET paths, HTTP/1.0, close after each
response. ``/healthz`` answers 200 with a JSON status while every part is healthy and 503
naming the failing part otherwise.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mailpipe.metrics import Metrics

log = logging.getLogger("mailpipe.http")

HealthCheck = Callable[[], dict[str, str]]


class StatusServer:
    def __init__(self, host: str, port: int, metrics: Metrics, health: HealthCheck):
        self._address = (host, port)
        self._metrics = metrics
        self._health = health
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, *self._address, reuse_address=True)
        log.info("listening", extra={"listener": "http", "address": f"{self._address[0]}:{self._address[1]}"})

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
            method, _, rest = request.partition(b" ")
            path = rest.partition(b" ")[0].split(b"?")[0]
            status, content_type, body = self._respond(method, path)
            writer.write(f"HTTP/1.0 {status}\r\nContent-Type: {content_type}\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode())
            if method != b"HEAD":
                writer.write(body)
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    def _respond(self, method: bytes, path: bytes) -> tuple[str, str, bytes]:
        if method not in (b"GET", b"HEAD"):
            return "405 Method Not Allowed", "text/plain", b"GET only\n"
        if path == b"/metrics":
            return "200 OK", CONTENT_TYPE_LATEST, generate_latest(self._metrics.registry)
        if path == b"/healthz":
            problems = self._health()
            body = json.dumps({"status": "ok" if not problems else "degraded", "problems": problems})
            return ("200 OK" if not problems else "503 Service Unavailable"), "application/json", body.encode()
        return "404 Not Found", "text/plain", b"try /metrics or /healthz\n"
