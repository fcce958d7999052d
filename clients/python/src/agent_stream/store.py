"""`AgentStreamMessageStore`: the platform's message store, backed by agent-stream.

Each `append` makes the message's id (a UUID) before its first try and sends it with
the message, so that a retry after a timeout or a dropped connection can never store
the message twice: the service answers a known id with the stream ID it already has.
That makes retrying always safe, so the store retries by itself, with backoff, on
connection errors, timeouts and 5xx answers that say "try again" (502, 503, 504),
for up to `retry_for` seconds, through a restart of the service.

`model` and `message` are converted as the platform's stores do: the message's `type`
is its class name, its payload the message itself when it is a dict, else
`dataclasses.asdict(message)`; `model` (a `QualifiedAIModel` dataclass) becomes
`{"ai_model": ..., "version": ...}`, as the platform's webhook sends it. Values JSON
has no type for are converted as pydantic's JSON mode does (enums by value,
datetimes as ISO 8601, sets and tuples as lists, ...): see `to_json`.
"""

from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
import random
import time
import uuid
from collections.abc import Mapping
from decimal import Decimal
from pathlib import PurePath
from typing import Any
from urllib.parse import quote

import anyio
import httpx

#: Time limit of one request, in seconds.
DEFAULT_TIMEOUT = 10.0
#: How long a call keeps trying before it gives up, in seconds.
DEFAULT_RETRY_FOR = 120.0
#: First wait before a retry, in seconds; it doubles after each failure in a row...
DEFAULT_FIRST_BACKOFF = 0.1
#: ...up to this.
DEFAULT_MAX_BACKOFF = 5.0
#: Answers that mean "the service is there, or will be, but cannot do it now".
RETRYABLE_STATUSES = frozenset({502, 503, 504})
#: The largest page of a snapshot, which `get` reads by.
PAGE = 10_000


class AgentStreamError(Exception):
    """A refusal by the service: its HTTP status and the contract's error code."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message

    @classmethod
    def from_response(cls, response: httpx.Response) -> AgentStreamError:
        code, message = f"http_{response.status_code}", response.reason_phrase
        try:
            error = response.json()["error"]
            code, message = str(error["code"]), str(error["message"])
        except (ValueError, KeyError, TypeError):
            pass  # a proxy's page, or no body: the status says enough
        return cls(response.status_code, code, message)


class AgentStreamUnavailable(AgentStreamError):
    """The service could not be reached, or kept answering "try again", for `retry_for`."""


def to_json(value: Any) -> Any:
    """`value` as plain JSON types (dict, list, str, int, float, bool, None).

    Dataclasses become dicts (`dataclasses.asdict`), pydantic models their
    `model_dump(mode="json")`; enums their value; datetimes, dates and times ISO 8601;
    UUIDs, paths and decimals strings; bytes UTF-8 text; sets, frozensets and tuples
    lists. NaN and infinities, which JSON cannot carry, are a ValueError; any other type
    a TypeError.
    """
    if value is None or isinstance(value, (bool, int, str)) and not isinstance(value, enum.Enum):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} cannot be sent: JSON has no NaN or infinity")
        return value
    if isinstance(value, enum.Enum):
        return to_json(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(dataclasses.asdict(value))
    if hasattr(value, "model_dump") and callable(value.model_dump):
        return value.model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(to_json(key)): to_json(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(item) for item in value]
    if isinstance(value, (datetime.datetime, datetime.date, datetime.time)):
        return value.isoformat()
    if isinstance(value, (uuid.UUID, PurePath, Decimal)):
        return str(value)
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8")
    raise TypeError(f"a {type(value).__name__} cannot be sent as JSON; convert it to a dict first")


class AgentStreamMessageStore:
    """The platform's `AgentMessageStore` interface, on an agent-stream service.

    `token` is a `write` token for the processes the worker appends to (a `read` token
    is enough for `get`). Use it as an async context manager, or call `aclose()`.
    """

    def __init__(
        self,
        base_url: str,
        token: str | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        retry_for: float = DEFAULT_RETRY_FOR,
        first_backoff: float = DEFAULT_FIRST_BACKOFF,
        max_backoff: float = DEFAULT_MAX_BACKOFF,
        http_client: httpx.AsyncClient | None = None,
    ) -> None:
        headers = {"Accept": "application/json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        self._headers = headers
        self._base_url = base_url.rstrip("/")
        self._client = http_client or httpx.AsyncClient(timeout=timeout)
        self._owns_client = http_client is None
        self._retry_for = retry_for
        self._first_backoff = first_backoff
        self._max_backoff = max_backoff

    async def append(self, process_id: str, model: Any, turn: int, message: Any, agent: Any) -> str:
        """Stores `message` as the next message of the process; returns its id."""
        payload = message if isinstance(message, dict) else dataclasses.asdict(message)
        agent_message = {
            # Made once, before the first try: every retry sends the same id.
            "id": str(uuid.uuid4()),
            "type": message.__class__.__name__,
            "turn": turn,
            "agent": to_json(agent),
            "model": to_json(model),
            "payload": to_json(payload),
        }
        body = json.dumps(agent_message, allow_nan=False).encode()
        response = await self._request(
            "POST",
            f"/processes/{quote(process_id, safe='')}/messages",
            content=body,
            headers={"Content-Type": "application/json"},
        )
        return str(response.json()["id"])

    async def get(self, process_id: str) -> list[dict]:
        """Every message of the process so far, in order, as the service sends them;
        `[]` for a process the service does not know yet."""
        messages: list[dict] = []
        after = "0"
        while True:
            # A page may hold fewer than asked (it is bounded in bytes too): only an
            # empty one says there is nothing more.
            try:
                response = await self._request(
                    "GET",
                    f"/processes/{quote(process_id, safe='')}/messages",
                    params={"follow": "false", "after": after, "limit": str(PAGE)},
                )
            except AgentStreamError as error:
                # A process no message was appended to yet has none, as in the
                # platform's stores (a service of the older contract answers 404).
                if error.code == "process_not_found":
                    return messages
                raise
            page = response.json()
            if not page:
                return messages
            messages.extend(page)
            after = page[-1]["stream_id"]

    async def finish(self, process_id: str, status: str) -> None:
        """Marks the process finished (`succeeded`, `failed`, ...): followers get the end.

        Finishing again with the same status is a no-op; another status is an
        `AgentStreamError` (409 `status_conflict`).
        """
        await self._request(
            "POST",
            f"/processes/{quote(process_id, safe='')}/finish",
            content=json.dumps({"status": status}).encode(),
            headers={"Content-Type": "application/json"},
        )

    async def aclose(self) -> None:
        if self._owns_client:
            await self._client.aclose()

    async def __aenter__(self) -> AgentStreamMessageStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        headers = {**self._headers, **kwargs.pop("headers", {})}
        give_up_at = time.monotonic() + self._retry_for
        backoff = self._first_backoff
        while True:
            try:
                response = await self._client.request(method, self._base_url + path, headers=headers, **kwargs)
            except (httpx.NetworkError, httpx.TimeoutException, httpx.RemoteProtocolError) as error:
                problem, wait = f"{type(error).__name__}: {error}", backoff
            else:
                if response.is_success:
                    return response
                refusal = AgentStreamError.from_response(response)
                if response.status_code not in RETRYABLE_STATUSES:
                    raise refusal
                problem, wait = str(refusal), max(backoff, _retry_after(response))
            # Jitter, so that workers cut off together do not come back together.
            wait = wait / 2 + random.random() * wait / 2
            if time.monotonic() + wait > give_up_at:
                raise AgentStreamUnavailable(
                    503,
                    "unavailable",
                    f"{method} {path} failed for {self._retry_for:g} s, last with {problem}",
                )
            await anyio.sleep(wait)
            backoff = min(backoff * 2, self._max_backoff)


def _retry_after(response: httpx.Response) -> float:
    try:
        return max(0.0, min(float(response.headers.get("retry-after", "0")), DEFAULT_MAX_BACKOFF))
    except ValueError:
        return 0.0
