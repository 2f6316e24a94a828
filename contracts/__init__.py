"""cso's public event contracts: envelope, payloads, subjects and streams (DESIGN §5)."""

from .codes import ancestors, tier_of, validate_uscc
from .envelope import ContractError, Envelope, FieldError, encode, make_event, parse_event
from .events import *  # noqa: F403
from .events import PAYLOAD_BY_TYPE, PAYLOADS, Payload
from .subjects import STREAMS, StreamSpec, Topology, snake

__all__ = [
    "PAYLOADS", "PAYLOAD_BY_TYPE", "STREAMS", "ContractError", "Envelope", "FieldError",
    "Payload", "StreamSpec", "Topology", "ancestors", "encode", "make_event", "parse_event",
    "snake", "tier_of", "validate_uscc",
]
