#!/usr/bin/env python3
"""How much memory snapshots that nobody reads make the server hold (issue 10, F2).

Run by hand, not by the suite (a figure, not a pass/fail):

    cargo build --release
    python3 benches/unread_snapshots.py target/release/agent-stream

It starts the binary on the embedded store with --no-auth on a free loopback port,
appends MESSAGES messages of about MESSAGE_BYTES each to one process, notes the
server's RSS, then opens CLIENTS connections that each ask for
`GET /processes/{id}/messages?follow=false&limit=10000` and never read a byte, waits
for the server to settle, and notes its RSS again. The target: 20 unread
10,000-message snapshots grow RSS by less than 80 MiB. (A snapshot is read from the
store as a follow catches up, as the client takes it (adr/0022), so an unread one holds
a few stream batches or two pages; before adr/0006 each was built whole, 16 MiB here,
and held until the write timeout.)
"""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

MESSAGES = 10_000
MESSAGE_BYTES = 1600
CLIENTS = 20
BATCH = 500
SETTLE_SECONDS = 5


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def main(binary):
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENT_STREAM_")}
    env.pop("DATABASE_URL", None)
    env.pop("REDIS_URL", None)
    server = subprocess.Popen(
        [binary, "serve", "--no-auth", "--listen", f"127.0.0.1:{port}"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"{base}/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        process = "unread-snapshots"
        text = "x" * (MESSAGE_BYTES - 150)
        for start in range(0, MESSAGES, BATCH):
            batch = [
                {"id": f"m-{i}", "type": "AssistantMessage", "turn": i, "payload": {"text": text}}
                for i in range(start, start + BATCH)
            ]
            request = urllib.request.Request(
                f"{base}/processes/{process}/messages",
                data=json.dumps(batch).encode(),
                headers={"Content-Type": "application/json"},
                method="POST",
            )
            urllib.request.urlopen(request, timeout=30).read()
        # One snapshot read whole, so that the allocator's first growth is not counted.
        whole = urllib.request.urlopen(
            f"{base}/processes/{process}/messages?follow=false&limit=10000", timeout=30
        ).read()
        time.sleep(1)
        before = rss_mib(server.pid)
        sockets = []
        for _ in range(CLIENTS):
            client = socket.create_connection(("127.0.0.1", port))
            # A small receive buffer: the client really holds back, as a stalled one would.
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sendall(
                f"GET /processes/{process}/messages?follow=false&limit=10000 HTTP/1.1\r\n"
                f"Host: 127.0.0.1\r\nAccept: */*\r\n\r\n".encode()
            )
            sockets.append(client)
        time.sleep(SETTLE_SECONDS)
        after = rss_mib(server.pid)
        print(
            json.dumps(
                {
                    "binary": binary,
                    "messages": MESSAGES,
                    "snapshot_bytes": len(whole),
                    "unread_clients": CLIENTS,
                    "rss_before_mib": round(before, 1),
                    "rss_after_mib": round(after, 1),
                    "growth_mib": round(after - before, 1),
                    "target_mib": 80,
                }
            )
        )
        for client in sockets:
            client.close()
    finally:
        server.terminate()
        server.wait(timeout=10)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "target/release/agent-stream")
