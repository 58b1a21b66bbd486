"""The floor of the latency benchmark: the cheapest client there can be, on raw sockets.

    python bench/floor_upload.py BASE_URL KEY DATA_DIR [--parallelism 10]

Does what bench/sequential_upload.py does (create, list, one POST /model/upload per
image) but with ten keep-alive connections at once, on asyncio streams with hand-written
HTTP/1.1: no HTTP library, no threads, bodies built as it goes, nothing checked but each
answer's status. Its client CPU is a fraction of any real client's, so what it takes is
what serve itself allows on this machine; bench_apply_latency.py runs it beside
`modelsync apply` to show how far modelsync is from that floor.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from pathlib import Path
from urllib.parse import urlsplit


class Connection:
    """One keep-alive HTTP/1.1 connection that POSTs JSON and reads JSON answers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str):
        self.reader, self.writer, self.host = reader, writer, host

    @classmethod
    async def open(cls, host: str, port: int) -> Connection:
        reader, writer = await asyncio.open_connection(host, port)
        return cls(reader, writer, host)

    async def post(self, path: str, body: dict) -> dict:
        raw = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(raw)}\r\n\r\n"
        )
        self.writer.write(head.encode() + raw)
        lines = (await self.reader.readuntil(b"\r\n\r\n")).split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(int(v) for k, _, v in (ln.partition(b":") for ln in lines[1:]) if k.lower() == b"content-length")
        answer = json.loads(await self.reader.readexactly(length))
        if status != 200 or answer.get("status") != "OK":
            raise SystemExit(f"floor upload: {path} answered {status}: {answer}")
        return answer

    def close(self) -> None:
        self.writer.close()


async def upload_all(base_url: str, key: str, data_dir: str, parallelism: int) -> None:
    url = urlsplit(base_url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    files = sorted(Path(data_dir).glob("*/*.png"))
    first = await Connection.open(host, port)
    await first.post("/model/create", {"tkn": key, "dataset_title": "floor", "dataset_type": "vision",
                                       "dataset_purpose": "classification"})
    listing = await first.post("/model/list", {"tkn": key})
    model_id = next(m["id"] for m in listing["dataset_list"] if m["title"] == "floor")
    todo = iter(files)

    async def worker(conn: Connection) -> None:
        for f in todo:  # one shared iterator: each file goes to whichever connection is free
            await conn.post("/model/upload", {"tkn": key, "model_id": model_id, "model_class": f.parent.name,
                                              "input": base64.b64encode(f.read_bytes()).decode(), "uid": f.stem})

    conns = [first, *[await Connection.open(host, port) for _ in range(parallelism - 1)]]
    await asyncio.gather(*(worker(c) for c in conns))
    for c in conns:
        c.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("base_url")
    p.add_argument("key")
    p.add_argument("data_dir")
    p.add_argument("--parallelism", type=int, default=10)
    args = p.parse_args(argv)
    asyncio.run(upload_all(args.base_url, args.key, args.data_dir, args.parallelism))
    return 0


if __name__ == "__main__":
    sys.exit(main())
