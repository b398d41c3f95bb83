"""What a DMARC report bomb costs the reader: time and peak RSS for one gzip of N empty
``<record/>`` elements behind real metadata (issue 11: 7 million in 122 KB).

Run: python bench/dmarc_bomb.py [--records N] [--module mailpipe.monitors.dmarc_reports]
(``--module`` names another copy of the reader, e.g. the one on main saved beside this file,
to compare side by side). One bomb per process: ru_maxrss is a peak. Prints; asserts nothing.
"""

from __future__ import annotations

import argparse
import importlib
import resource
import time
import zlib
from pathlib import Path

YAHOO = Path(__file__).parent.parent / "tests" / "fixtures" / "dmarc" / "yahoo.com!nerou.de!1665532800!1665619199.xml"


def bomb(records: int) -> bytes:
    xml = YAHOO.read_bytes()
    packer = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    pieces = [packer.compress(xml[xml.index(b"<feedback"):xml.index(b"<record>")])]
    block = b"<record/>" * 100_000
    pieces += [packer.compress(block) for _ in range(records // 100_000)]
    return b"".join([*pieces, packer.compress(b"</feedback>"), packer.flush()])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=7_000_000)
    parser.add_argument("--module", default="mailpipe.monitors.dmarc_reports")
    args = parser.parse_args()
    reader = importlib.import_module(args.module)
    data = bomb(args.records)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    started = time.monotonic()
    try:
        outcome = f"accepted, {len(reader.reports(data)[0].records)} records"
    except ValueError as exc:
        outcome = f"refused: {exc}"
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{args.module}: {args.records} records in {len(data)} bytes of gzip: {outcome} "
          f"in {time.monotonic() - started:.2f} s, peak RSS {peak:.0f} MiB (before reading {before:.0f} MiB)")


if __name__ == "__main__":
    main()
