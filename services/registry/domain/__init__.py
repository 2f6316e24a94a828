"""registry's domain, pure: its rules (rules.py), the batch ledger each fact is decided against
(ledger.py), and its own errors (errors.py). Nothing here reads a database or a bus."""

from .errors import NotYet, OutOfScope, Rejected
from .ledger import Ledger, NewInterval, Recorded, decide
from .rules import (
    Interval,
    Organization,
    close_base,
    close_facility,
    deregister,
    dissolve_hub,
    dissolve_party,
    establish_hub,
    file,
    form_party,
    open_base,
    open_facility,
    register,
    update,
)

__all__ = [
    "Interval", "Ledger", "NewInterval", "NotYet", "Organization", "OutOfScope", "Recorded", "Rejected",
    "close_base", "close_facility", "decide", "deregister", "dissolve_hub", "dissolve_party", "establish_hub", "file",
    "form_party", "open_base", "open_facility", "register", "update",
]
