"""The agent-stream client for a Python worker.

`AgentStreamMessageStore` has the interface of the platform's `AgentMessageStore`
(`append(process_id, model, turn, message, agent) -> str`, `get(process_id)`) plus
`finish(process_id, status)`, so a worker switches to live streaming by constructing
this store instead of its own.
"""

from agent_stream.store import (
    AgentStreamError,
    AgentStreamMessageStore,
    AgentStreamUnavailable,
    to_json,
)

__all__ = [
    "AgentStreamError",
    "AgentStreamMessageStore",
    "AgentStreamUnavailable",
    "to_json",
]
