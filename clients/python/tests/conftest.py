"""The test kit: the real agent-stream binary on a real PostgreSQL and Redis (from
DATABASE_URL and REDIS_URL, which `bash .ci/test` starts and exports), with auth on.
Each server gets its own Redis key prefix; each test its own process ids."""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import threading
import time
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]
BIN = Path(
    os.environ.get("AGENT_STREAM_BIN")
    or Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target") / "debug" / "agent-stream"
)
#: Generous bound on any one wait, so that a broken client fails instead of hanging.
WAIT = 20.0
LISTENING = re.compile(r"agent-stream listening.* address=[^\s:]+:(\d+)")


def required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise RuntimeError(
            f"{name} is not set: the client tests run the real server on PostgreSQL and Redis. "
            "Run them with `bash .ci/test`, which starts both, or set DATABASE_URL and REDIS_URL"
        )
    return value


class Server:
    """`agent-stream serve` with auth on; it keeps its port across `kill9` and `start`."""

    def __init__(self) -> None:
        if not BIN.is_file():
            raise RuntimeError(f"{BIN} not found: build it with `cargo build` (or set AGENT_STREAM_BIN)")
        self.env = {
            **os.environ,
            "DATABASE_URL": required("DATABASE_URL"),
            "REDIS_URL": required("REDIS_URL"),
            "AGENT_STREAM_REDIS_PREFIX": f"py-test-{uuid.uuid4().hex}:",
            "AGENT_STREAM_AUTH_SECRET": secrets.token_hex(32),
            "AGENT_STREAM_LOG": "warn,agent_stream::cli=info",
            "AGENT_STREAM_LOG_FORMAT": "text",
            "NO_COLOR": "1",
        }
        self.port = 0
        self.child: subprocess.Popen | None = None
        self.log: list[str] = []

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Starts it (again, on the same port once it has one); waits until it listens."""
        assert self.child is None, "the server is already running"
        deadline = time.monotonic() + WAIT
        while True:
            try:
                self._launch(deadline)
                return
            except RuntimeError:
                # A port a killed server just let go of may take a moment to be free.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def _launch(self, deadline: float) -> None:
        child = subprocess.Popen(
            [str(BIN), "serve", "--listen", f"127.0.0.1:{self.port}"],
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        listening = threading.Event()

        def read() -> None:
            for line in child.stderr:
                self.log.append(line.rstrip())
                match = LISTENING.search(line)
                if match:
                    self.port = int(match.group(1))
                    listening.set()

        threading.Thread(target=read, daemon=True).start()
        while not listening.wait(0.05):
            if child.poll() is not None or time.monotonic() > deadline:
                child.kill()
                child.wait()
                raise RuntimeError("the server did not listen:\n" + "\n".join(self.log[-20:]))
        self.child = child

    def kill9(self) -> None:
        """kill -9: no shutdown, connections cut as a crash would."""
        if self.child is not None:
            self.child.send_signal(signal.SIGKILL)
            self.child.wait()
            self.child = None

    def token(self, *args: str) -> str:
        return subprocess.run(
            [str(BIN), "token", *args], env=self.env, check=True, capture_output=True, text=True
        ).stdout.strip()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def server():
    server = Server()
    server.start()
    try:
        yield server
    finally:
        server.kill9()


@pytest.fixture
def process_id() -> str:
    return f"py-{uuid.uuid4()}"
