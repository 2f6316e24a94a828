"""JSON Schema of every event (envelope + payload), committed under contracts/schemas/.

Regenerate with `python -m contracts.schema`; a test fails when a model and its file drift apart.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .envelope import Envelope
from .events import PAYLOADS, Payload
from .receipts import ReceiptsAnswer, ReceiptsQuery
from .subjects import STREAMS, Topology

SCHEMAS = Path(__file__).parent / "schemas"


def event_schema(payload: type[Payload]) -> dict[str, Any]:
    schema = Envelope[payload].model_json_schema()  # type: ignore[valid-type]
    schema["title"] = payload.TYPE
    schema["description"] = (payload.__doc__ or payload.TYPE).strip().splitlines()[0]
    schema["$id"] = f"https://cso.example.gov.cn/schemas/{payload.TYPE}.v{payload.VERSION}.json"
    schema["properties"]["type"] = {"const": payload.TYPE, "type": "string"}
    schema["properties"]["version"] = {"const": payload.VERSION, "type": "integer"}
    schema["x-subject"] = payload.SUBJECT or Topology().event_subject(
        payload.TYPE, "510681001014" if payload.CONTEXT != "notify" else "51")
    schema["x-context"] = payload.CONTEXT
    return schema


def rendered() -> dict[str, str]:
    files = {f"{p.TYPE}.v{p.VERSION}.json": json.dumps(event_schema(p), ensure_ascii=False, indent=2,
                                                       sort_keys=True) + "\n" for p in PAYLOADS}
    streams = [{"name": s.name, "subjects": list(s.subjects), "description": s.description,
                "retention": s.retention, "storage": s.storage,
                "duplicate_window_seconds": s.duplicate_window_seconds,
                "max_age_days": s.max_age_days} for s in STREAMS]
    for model, subject in ((ReceiptsQuery, "cso.query.registry.receipts.<source>"),
                           (ReceiptsAnswer, "reply to cso.query.registry.receipts.<source>")):
        query = model.model_json_schema()
        query["$id"] = f"https://cso.example.gov.cn/schemas/{model.__name__}.json"
        query["x-subject"] = subject
        files[f"{model.__name__}.json"] = json.dumps(query, ensure_ascii=False, indent=2, sort_keys=True) + "\n"
    files["streams.json"] = json.dumps(streams, ensure_ascii=False, indent=2) + "\n"
    return files


def write(directory: Path = SCHEMAS) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    for old in directory.glob("*.json"):
        old.unlink()
    written = []
    for name, text in rendered().items():
        path = directory / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in write(Path(sys.argv[1]) if len(sys.argv) > 1 else SCHEMAS):
        print(path)
