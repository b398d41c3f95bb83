"""Baseline for bench/ingest.py: aiosmtpd on its own event loop, storing nothing.

What mailpipe's listener costs on top of the protocol library is the distance between this
server and mailpipe in the same run. Usage: python bench/bare_aiosmtpd.py PORT
"""

from __future__ import annotations

import asyncio
import logging
import sys

from aiosmtpd.smtp import SMTP


class Discard:
    async def handle_DATA(self, server: SMTP, session: object, envelope: object) -> str:
        return "250 2.0.0 Ok: discarded"


async def main(port: int) -> None:
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(Discard(), hostname="bare"), "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
