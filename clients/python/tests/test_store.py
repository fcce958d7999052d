"""AgentStreamMessageStore against the real server: the platform's conversions, every
message stored once and in order through retries, a lost answer and a crash."""

from __future__ import annotations

import dataclasses
import datetime
import enum
import math
import time
import uuid
from typing import Any

import anyio
import httpx
import pytest

from agent_stream import AgentStreamError, AgentStreamMessageStore, AgentStreamUnavailable, to_json

pytestmark = pytest.mark.anyio


# What the platform's worker passes: an SDK message dataclass, and its model type.
class SupportedAnthropicModel(enum.StrEnum):
    CLAUDE_SONNET_4_5 = "claude-sonnet-4-5"


@dataclasses.dataclass(frozen=True)
class QualifiedAIModel:
    ai_model: SupportedAnthropicModel
    version: str | None = None


@dataclasses.dataclass
class TextBlock:
    text: str


@dataclasses.dataclass
class AssistantMessage:
    content: list[TextBlock]
    model: str
    parent_tool_use_id: str | None = None


MODEL = QualifiedAIModel(SupportedAnthropicModel.CLAUDE_SONNET_4_5, "20250929")


def said(text: str) -> AssistantMessage:
    return AssistantMessage(content=[TextBlock(text)], model="claude-sonnet-4-5-20250929")


def store_for(server, **kwargs: Any) -> AgentStreamMessageStore:
    kwargs.setdefault("first_backoff", 0.05)
    kwargs.setdefault("max_backoff", 0.5)
    return AgentStreamMessageStore(server.base, server.token("--all", "--scope", "write"), **kwargs)


async def test_append_converts_the_message_and_model_as_the_platform_does(server, process_id):
    async with store_for(server) as store:
        first = await store.append(process_id, MODEL, 1, said("Reading the repository."), "CLAUDE_CODE")
        second = await store.append(process_id, "gpt-4o", 2, {"kind": "note", "n": 1}, "OPENAI")
        stored = await store.get(process_id)
    assert [m["id"] for m in stored] == [first, second]
    uuid.UUID(first)
    assert [m["stream_id"] for m in stored] == ["1-0", "2-0"]
    assert {k: stored[0][k] for k in ("type", "turn", "agent", "model", "payload")} == {
        "type": "AssistantMessage",
        "turn": 1,
        "agent": "CLAUDE_CODE",
        "model": {"ai_model": "claude-sonnet-4-5", "version": "20250929"},
        "payload": {
            "content": [{"text": "Reading the repository."}],
            "model": "claude-sonnet-4-5-20250929",
            "parent_tool_use_id": None,
        },
    }
    # A dict is its own payload, and its class name is its type, as in the platform.
    assert stored[1]["type"] == "dict"
    assert stored[1]["model"] == "gpt-4o"
    assert stored[1]["payload"] == {"kind": "note", "n": 1}


async def test_get_of_a_process_not_known_yet_is_empty(server, process_id):
    async with store_for(server) as store:
        assert await store.get(process_id) == []


class LoseFirstAnswer(httpx.AsyncBaseTransport):
    """Delivers the first request, then drops its answer, as a timeout after the
    service committed would: the worker cannot know whether it was stored."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.sent: list[bytes] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = await request.aread()
        response = await self.inner.handle_async_request(request)
        if request.method == "POST":
            self.sent.append(body)
            if len(self.sent) == 1:
                await response.aread()
                await response.aclose()
                raise httpx.ReadTimeout("the answer was lost", request=request)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_retry_after_a_lost_answer_stores_the_message_once(server, process_id):
    transport = LoseFirstAnswer()
    async with httpx.AsyncClient(transport=transport) as http:
        store = store_for(server, http_client=http)
        message_id = await store.append(process_id, MODEL, 1, said("once"), "CLAUDE_CODE")
        stored = await store.get(process_id)
    assert len(transport.sent) == 2, "the append was tried again"
    assert transport.sent[0] == transport.sent[1], "with the very same id and body"
    assert [m["id"] for m in stored] == [message_id]


class CountFailures(httpx.AsyncBaseTransport):
    """Passes requests on, counting those that fail to get an answer."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.failures = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self.inner.handle_async_request(request)
        except httpx.TransportError:
            self.failures += 1
            raise

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_crash_and_restart_mid_session_loses_and_doubles_nothing(server, process_id):
    count = 60
    ids: list[str] = []
    transport = CountFailures()

    async def worker() -> None:
        async with httpx.AsyncClient(transport=transport, timeout=2.0) as http:
            store = store_for(server, http_client=http)
            for turn in range(1, count + 1):
                ids.append(await store.append(process_id, MODEL, turn, said(f"step {turn}"), "CLAUDE_CODE"))
                await anyio.sleep(0.01)
            await store.finish(process_id, "succeeded")

    async with anyio.create_task_group() as tasks:
        tasks.start_soon(worker)
        with anyio.fail_after(30):
            while len(ids) < 15:
                await anyio.sleep(0.01)
        server.kill9()
        await anyio.sleep(0.5)  # the worker meets a dead port meanwhile
        assert len(ids) < count, "the crash came in the middle of the session"
        await anyio.to_thread.run_sync(server.start)
        with anyio.fail_after(30):
            while len(ids) < 40:
                await anyio.sleep(0.01)
        server.kill9()
        await anyio.to_thread.run_sync(server.start)

    assert transport.failures > 0, "the worker met the crashes and retried"
    async with store_for(server) as store:
        stored = await store.get(process_id)
    assert [m["id"] for m in stored] == ids
    assert [m["turn"] for m in stored] == list(range(1, count + 1))
    assert [m["stream_id"] for m in stored] == [f"{seq}-0" for seq in range(1, count + 1)]
    assert [m["payload"]["content"][0]["text"] for m in stored] == [f"step {n}" for n in range(1, count + 1)]


async def test_finish_ends_the_process_and_appends_after_it_are_refused(server, process_id):
    async with store_for(server) as store:
        await store.append(process_id, MODEL, 1, said("done"), "CLAUDE_CODE")
        await store.finish(process_id, "succeeded")
        await store.finish(process_id, "succeeded")  # the same status again is a no-op
        with pytest.raises(AgentStreamError) as refused:
            await store.append(process_id, MODEL, 2, said("too late"), "CLAUDE_CODE")
        assert (refused.value.status, refused.value.code) == (409, "process_finished")
        with pytest.raises(AgentStreamError) as conflict:
            await store.finish(process_id, "failed")
        assert (conflict.value.status, conflict.value.code) == (409, "status_conflict")
        assert len(await store.get(process_id)) == 1


async def test_a_refusal_is_raised_at_once_not_retried(server, process_id):
    store = AgentStreamMessageStore(server.base, server.token("--all", "--scope", "read"), retry_for=30)
    async with store:
        started = time.monotonic()
        with pytest.raises(AgentStreamError) as refused:
            await store.append(process_id, MODEL, 1, said("no"), "CLAUDE_CODE")
        assert (refused.value.status, refused.value.code) == (403, "forbidden")
        assert time.monotonic() - started < 5


async def test_a_service_that_stays_down_is_given_up_on_after_retry_for(server, process_id):
    server.kill9()
    async with store_for(server, retry_for=1.0) as store:
        started = time.monotonic()
        with pytest.raises(AgentStreamUnavailable) as gave_up:
            await store.append(process_id, MODEL, 1, said("nobody there"), "CLAUDE_CODE")
        assert 0.5 < time.monotonic() - started < 5
        assert "ConnectError" in str(gave_up.value)


def test_values_json_has_no_type_for_are_converted_as_pydantic_json_mode_does():
    assert to_json(MODEL) == {"ai_model": "claude-sonnet-4-5", "version": "20250929"}
    moment = datetime.datetime(2026, 11, 27, 10, 15, 3, tzinfo=datetime.timezone.utc)
    assert to_json({"at": moment, "tags": {"a"}, "pair": (1, 2), "raw": b"x"}) == {
        "at": "2026-11-27T10:15:03+00:00",
        "tags": ["a"],
        "pair": [1, 2],
        "raw": "x",
    }
    with pytest.raises(ValueError):
        to_json({"x": math.nan})
    with pytest.raises(TypeError):
        to_json(object())
