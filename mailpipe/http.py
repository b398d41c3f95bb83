"""The operator's HTTP endpoint: ``/metrics`` for Prometheus, ``/healthz`` for probes, and
``/customers?phone=…`` for a phone system's caller-ID screen-pop.

A few lines of asyncio instead of a web framework: three GET paths, HTTP/1.0, close after each
response. ``/healthz`` answers 200 with a JSON status while every part is healthy and 503
naming the failing part otherwise. ``/customers`` answers only a request that carries
``Authorization: Bearer <desk.lookup_token>`` (401 otherwise, compared in constant time; 404
while no token is configured): it hands out customers' names and cases.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from mailpipe.errors import StoreUnavailable
from mailpipe.metrics import Metrics

log = logging.getLogger("mailpipe.http")

HealthCheck = Callable[[], dict[str, str]]
Lookup = Callable[[str], dict[str, Any]]  # a phone number -> the caller (``lookup.caller``), blocking


class StatusServer:
    def __init__(self, host: str, port: int, metrics: Metrics, health: HealthCheck,
                 lookup: Lookup | None = None, token: str = ""):
        self._address = (host, port)
        self._metrics = metrics
        self._health = health
        self._lookup = lookup
        self._token = token.encode()
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
            path, _, query = rest.partition(b" ")[0].partition(b"?")
            if path == b"/customers" and method == b"GET":
                status, content_type, body = await self._customers(request, query)
            else:
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

    async def _customers(self, request: bytes, query: bytes) -> tuple[str, str, bytes]:
        if self._lookup is None or not self._token:
            return "404 Not Found", "text/plain", b"the customer lookup is off (desk.lookup_token)\n"
        given = b""
        for line in request.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"authorization":
                scheme, _, given = value.strip().partition(b" ")
                given = given.strip() if scheme.lower() == b"bearer" else b""
        if not hmac.compare_digest(given, self._token):
            log.warning("customer lookup refused: no valid token")
            return "401 Unauthorized", "text/plain", b"Authorization: Bearer <desk.lookup_token> required\n"
        phone = parse_qs(query.decode("utf-8", "replace")).get("phone", [""])[0]
        if not phone:
            return "400 Bad Request", "text/plain", b"GET /customers?phone=NUMBER\n"
        try:
            found = await asyncio.to_thread(self._lookup, phone)
        except StoreUnavailable:
            return "503 Service Unavailable", "text/plain", b"the store cannot be reached\n"
        return "200 OK", "application/json", json.dumps(found, ensure_ascii=False).encode()
