"""Writes contracts/asyncapi.json, the AsyncAPI document of cso's bus.

    python -m cso_local.asyncapi [path]     # default: contracts/asyncapi.json

contracts/asyncapi.py builds the document from the contracts; what is not theirs is gathered here and
passed in, so the contracts depend on nothing of the runtime or the services (the import rule of
tests/unit/test_import_graph.py): the services' commands, whose models live in the services, and
the security schemes, from what cso/natsauth.py lets each kind of NATS user publish and subscribe.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from contracts import Topology
from contracts import asyncapi as builder
from cso import natsauth
from services.registry.commands import COMMANDS as REGISTRY_COMMANDS
from services.training.commands import COMMANDS as TRAINING_COMMANDS

# An outside publisher stands for all of them: its name and region are shown as <user> and <region>.
_EXAMPLE = natsauth.Publisher("example-register", "510681")
_EXAMPLE_REGION = "51.5106.510681"


def commands() -> dict[str, dict[str, type[BaseModel]]]:
    """Per service, the model of each command's body."""
    return {"registry": dict(REGISTRY_COMMANDS), "training": dict(TRAINING_COMMANDS)}


def security() -> dict[str, dict[str, Any]]:
    """One scheme per kind of NATS user, saying what it may publish and subscribe."""
    users = natsauth.permissions(Topology(), natsauth.Users(publishers=(_EXAMPLE,)))
    out: dict[str, dict[str, Any]] = {}
    for perm in users:
        key = "publisher" if perm.role == "outside publisher" else perm.user

        def shown(subjects: tuple[str, ...]) -> list[str]:
            return [s.replace(_EXAMPLE.name, "<user>").replace(_EXAMPLE_REGION, "<region>") for s in subjects]

        if perm.unrestricted:
            may = "Everything: streams (cso migrate), commands, intake version 1, the dead letters."
            permissions: dict[str, Any] = {"publish": [">"], "subscribe": [">"]}
        else:
            permissions = {"publish": shown(perm.publish), "subscribe": shown(perm.subscribe)}
            may = "Publish " + ", ".join(f"`{s}`" for s in permissions["publish"]) + "; subscribe " + \
                ", ".join(f"`{s}`" for s in permissions["subscribe"]) + "."
        who = {"publisher": "An outside system's user, bound to a region (province, city or county), named "
                            "by the operator (`cso nats-config --publisher <user>=<region>`). <region> "
                            "stands for its region's subject tokens: 51.5106.510681 for a county; a city's "
                            "and a province's end in wildcards (contracts/README.md, Your NATS user).",
               "admin": "The operators' user."}.get(key, f"The {perm.role} `{perm.user}`.")
        out[key] = {"type": "userPassword",
                    "description": f"{who} Connect with the inbox prefix `_INBOX_<user>`. {may}",
                    "x-nats-permissions": permissions}
    return out


def document() -> dict[str, Any]:
    return builder.document(commands(), security())


def rendered() -> str:
    return builder.rendered(commands(), security())


def write(path: Path = builder.DOCUMENT) -> Path:
    path.write_text(rendered(), encoding="utf-8")
    return path


if __name__ == "__main__":
    print(write(Path(sys.argv[1]) if len(sys.argv) > 1 else builder.DOCUMENT))
