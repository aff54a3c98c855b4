"""Supervisor control socket (lmxctl, gateway) and the status events it publishes."""

from __future__ import annotations

import msgspec


class ModelStatus(msgspec.Struct, tag="model_status", frozen=True):
    """One configured model as the supervisor sees it. ``state`` uses supervisord's names.

    ``identity`` is the worker's data-path identity (``model#generation``) while RUNNING, else "".
    ``seq`` grows with every change the supervisor publishes, so a subscriber can drop stale ones.
    """

    name: str
    state: str
    seq: int
    generation: int = 0
    pid: int = 0
    identity: str = ""
    ctx_len: int = 0
    started_at: float = 0.0
    description: str = ""


class GetStatus(msgspec.Struct, tag="status", frozen=True):
    name: str | None = None


ControlRequest = GetStatus


class StatusReply(msgspec.Struct, tag="status_reply", frozen=True):
    models: list[ModelStatus]


class CommandResult(msgspec.Struct, tag="result", frozen=True):
    ok: bool
    message: str = ""


ControlReply = StatusReply | CommandResult
