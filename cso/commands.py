"""Parsing a command's body (HTTP or NATS request-reply) into its typed model, field-named errors."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from contracts import ContractError
from contracts.envelope import MAX_EVENT_BYTES, load_json

M = TypeVar("M", bound=BaseModel)


def parse_command(commands: Mapping[str, type[M]], command: str, body: bytes,
                  limit: int = MAX_EVENT_BYTES) -> M:
    """The body of `command` validated as its model; ContractError naming the field otherwise."""
    model = commands.get(command)
    if model is None:
        raise ContractError.single("command", f"unknown command {command[:100]!r}; one of {', '.join(commands)}")
    return parse_body(model, body, limit, "a command's body")


def parse_body(model: type[M], body: bytes, limit: int = MAX_EVENT_BYTES, what: str = "the body") -> M:
    """A JSON object body validated as `model`: size, strict JSON, object, fields; the
    ContractError names the field."""
    if len(body) > limit:
        raise ContractError.single("$", f"body of {len(body)} bytes exceeds {limit}")
    data = load_json(body)
    if not isinstance(data, dict):
        raise ContractError.single("$", f"{what} is a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ContractError.from_validation(e) from None
