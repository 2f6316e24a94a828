"""Uploading the organizations sheet (services/registry/sheet.py): a verdict for every row, then
(unless it is a dry run) the rows applied through registry's command path.

Each row is a registry command: validated as `POST /commands/{command}` validates it (the same
model, the same ContractError), decided by `record_batch` as commands are (the same rules, the same
events, the token's region as scope), in one transaction for the whole sheet, in chunks of
CHUNK rows so that progress can be reported. Then:

- a dry run rolls everything back: the verdicts are what applying would do, row by row;
- a sheet with refused rows rolls back too, unless `partial` is asked: then the good rows commit
  and nothing of a refused row (record_batch leaves nothing of a rejected fact);
- rows applied are remembered in registry's inbox under their derived event id (stream "import"),
  so an upload of the same sheet again finds every row "already applied" and changes nothing.

Verdicts: `ok` (a dry run's good row), `applied`, `already_applied`, `held` (good, but not applied
because the sheet has refused rows and `partial` was not asked), `refused` (with the sheet, row,
field as header and command field, and reason).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any
from uuid import UUID, uuid5

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import ContractError, Envelope, make_event
from cso import spreadsheet
from cso.commands import parse_command
from cso.service import Runtime

from . import sheet as template
from . import store
from .commands import COMMANDS
from .domain import Rejected
from .record import Recorded, record_batch

CHUNK = 1000
IMPORT_STREAM = "import"


@dataclass
class Verdict:
    sheet: str
    row: int
    kind: str
    status: str = "ok"
    header: str | None = None
    field: str | None = None
    reason: str | None = None
    event_id: str | None = None
    id: str | None = None

    def refuse(self, header: str, field: str, reason: str) -> None:
        self.status, self.header, self.field, self.reason = "refused", header or None, field, reason


@dataclass
class Progress:
    phase: str          # "read", "decide"
    done: int
    total: int


@dataclass
class Outcome:
    status: int
    body: dict[str, Any]


@dataclass
class _Pending:
    verdict: Verdict
    row: template.Row
    envelope: Envelope[Any] | None = None


@dataclass
class Upload:
    data: bytes
    dry_run: bool
    partial: bool
    source: str
    scope: str | None
    actor: str | None
    ignored_sheets: list[dict[str, str]] = field(default_factory=list)
    ignored_columns: list[dict[str, str]] = field(default_factory=list)


def _read(upload: Upload) -> tuple[list[Verdict], list[_Pending]]:
    """Every non-blank row under a header: a verdict, and the rows that became commands."""
    verdicts: list[Verdict] = []
    pending: list[_Pending] = []
    for ws in spreadsheet.read(upload.data, template.MAX_ROWS):
        header = template.find_header(ws.rows)
        if header is None and ws.name == template.GUIDE:
            continue   # the template's own explanations
        if header is None:
            if any(c for _, cells in ws.rows for c in cells):
                upload.ignored_sheets.append({"sheet": ws.name, "reason": "no header row of the template "
                                              "in its first 10 rows"})
            continue
        if template.KIND_COLUMN not in header.columns and ws.name.strip() not in template.KINDS:
            upload.ignored_sheets.append({"sheet": ws.name, "reason": f"neither named {'、'.join(template.KINDS)} "
                                          f"nor with a {template.KIND_COLUMN} column"})
            continue
        upload.ignored_columns.extend({"sheet": ws.name, "header": h} for h in header.ignored)
        for number, cells in ws.rows:
            if number <= header.row or not any(cells):
                continue
            verdict = Verdict(ws.name, number, "")
            verdicts.append(verdict)
            try:
                kind = template.kind_of(ws.name, cells, header)
                assert kind is not None
                verdict.kind = kind.name
                pending.append(_Pending(verdict, template.read_row(ws.name, number, kind, cells, header)))
            except template.RowError as e:
                verdict.refuse(e.header, e.field, e.reason)
    return verdicts, pending


async def _known_organizations(conn: AsyncConnection, rows: Sequence[template.Row]
                               ) -> tuple[dict[str, UUID], dict[tuple[str, str], UUID]]:
    """Organizations on record that rows name: by credit code, and by (community, name)."""
    codes = sorted({c for r in rows for c in (r.body.get("social_credit_code"), r.lookup.get("credit_code")) if c})
    pairs = {(str(r.body["community_code"]), str(r.body["name"])) for r in rows
             if r.kind.command in ("file", "register") and r.body.get("community_code") and r.body.get("name")}
    pairs |= {(r.lookup["community_code"], r.lookup["name"]) for r in rows
              if r.lookup.get("community_code") and r.lookup.get("name")}
    by_code = await store.credit_code_holders(conn, codes) if codes else {}
    by_name = await store.organizations_named(conn, sorted(pairs))
    return by_code, by_name


def _identify(rows: Sequence[template.Row], by_code: dict[str, UUID],
              by_name: dict[tuple[str, str], UUID]) -> None:
    """Give each row the ids its command needs: the record on file when there is one, else derived
    (so a filing and its registration, in one sheet or two, are one organization)."""
    sheet_codes: dict[str, UUID] = {}
    for r in rows:
        if r.kind.command not in ("file", "register"):
            continue
        community, name = str(r.body.get("community_code", "")), str(r.body.get("name", ""))
        code = r.body.get("social_credit_code")
        ident = ((by_code.get(code) if code else None) or by_name.get((community, name))
                 or template.organization_id(community, name))
        r.body["organization_id"] = str(ident)
        if code:
            sheet_codes.setdefault(code, ident)
    for r in rows:
        if r.kind.command == "establish_hub":
            code = r.lookup.get("credit_code")
            if code:
                org = by_code.get(code) or sheet_codes.get(code)
            else:
                pair = (r.lookup["community_code"], r.lookup["name"])
                org = by_name.get(pair) or template.organization_id(*pair)
            if org is not None:
                r.body["organization_id"] = str(org)
            r.body["hub_id"] = str(uuid5(template.NAMESPACE, f"{r.county}|hub|{r.key}"))
        elif r.kind.command == "open_base":
            r.body["base_id"] = str(uuid5(template.NAMESPACE, f"{r.county}|base|{r.key}"))
        elif r.kind.command == "open_facility":
            r.body["facility_id"] = str(uuid5(template.NAMESPACE, f"{r.county}|facility|{r.key}"))


def _refusal(row: template.Row, field_name: str, reason: str) -> tuple[str, str, str]:
    """(header, field, reason) for the clerk: a hub's organization by what the sheet named it."""
    header = row.kind.header_of(field_name.split(".", 1)[0])
    if row.kind.command == "establish_hub" and field_name == "organization_id":
        named = (f"credit code {row.lookup['credit_code']}" if row.lookup.get("credit_code") else
                 f"{row.lookup.get('name')} in community {row.lookup.get('community_code')}")
        if "organization_id" not in row.body or reason.startswith("no organization"):
            reason = f"no organization with {named} is on record"
        else:
            reason = f"{named}: {reason}"
    return header, field_name, reason


def _validate(upload: Upload, pending: list[_Pending]) -> list[_Pending]:
    """Each row through the command's model, as `POST /commands/…` would; the rows that pass, with
    their envelopes (event id derived), refused if outside the caller's region or repeating a row."""
    good: list[_Pending] = []
    first: dict[UUID, _Pending] = {}
    for p in pending:
        row, verdict = p.row, p.verdict
        try:
            payload = parse_command(COMMANDS, row.kind.command, json.dumps(row.body).encode())
            p.envelope = make_event(payload, source=upload.source, region=payload.region_of() or "00",
                                    event_id=row.event_id)
        except ContractError as e:
            error = e.errors[0]
            verdict.refuse(*_refusal(row, error.field, "; ".join(
                f"{x.field}: {x.message}" if x is not error else x.message for x in e.errors)))
            continue
        verdict.event_id = str(row.event_id)
        region = p.envelope.region
        if upload.scope is not None and not region.startswith(upload.scope):
            verdict.refuse(row.kind.also["region"], "region",
                           f"{region} is outside your region {upload.scope or 'national'}")
            continue
        earlier = first.get(row.event_id)
        if earlier is not None:
            key_header = row.kind.columns[0].header if row.kind.command != "register" else "统一社会信用代码"
            verdict.refuse(key_header, "key", f"the same {row.kind.name} as sheet {earlier.verdict.sheet} "
                                               f"row {earlier.verdict.row}")
            continue
        first[row.event_id] = p
        good.append(p)
    return good


async def run(runtime: Runtime, upload: Upload) -> AsyncIterator[Progress | Outcome]:
    """The upload, with progress as it goes; the last item is the Outcome."""
    try:
        verdicts, pending = _read(upload)
    except spreadsheet.SheetError as e:
        yield Outcome(422, {"ok": False, "errors": [{"field": e.field, "message": e.message}]})
        return
    yield Progress("read", len(verdicts), len(verdicts))
    try:
        async with runtime.engine.connect() as conn:
            async with conn.begin() as transaction:
                by_code, by_name = await _known_organizations(conn, [p.row for p in pending])
                _identify([p.row for p in pending], by_code, by_name)
                good = _validate(upload, pending)
                done = set(await store.inbox_entries(conn, [p.row.event_id for p in good]))
                fresh = []
                for p in good:
                    if p.row.event_id in done:
                        p.verdict.status, p.verdict.reason = "already_applied", "this row was applied before"
                    else:
                        fresh.append(p)
                for start in range(0, len(fresh), CHUNK):
                    chunk = fresh[start:start + CHUNK]
                    results = await record_batch(conn, [p.envelope for p in chunk if p.envelope],
                                                 runtime.topology, check_region=False, scope=upload.scope,
                                                 actor=upload.actor)
                    for p, result in zip(chunk, results, strict=True):
                        if isinstance(result, Rejected):
                            p.verdict.refuse(*_refusal(p.row, result.field, result.message))
                        else:
                            assert isinstance(result, Recorded)
                            p.verdict.id = result.aggregate_id
                    yield Progress("decide", min(start + CHUNK, len(fresh)), len(fresh))
                refused = sum(v.status == "refused" for v in verdicts)
                accepted = [p for p in fresh if p.verdict.status == "ok"]
                apply = not upload.dry_run and (refused == 0 or upload.partial)
                if apply and accepted:
                    await store.add_event_ids(conn, [p.row.event_id for p in accepted], IMPORT_STREAM,
                                              [p.verdict.row for p in accepted])
                    for p in accepted:
                        p.verdict.status = "applied"
                else:
                    await transaction.rollback()
                    if not upload.dry_run:
                        for p in accepted:
                            p.verdict.status, p.verdict.reason = "held", (
                                "not applied: the sheet has refused rows; fix them, or upload with partial=true")
    except IntegrityError:
        # Another upload of the same rows committed first: this one's rows are theirs now.
        yield Outcome(409, {"ok": False, "errors": [{"field": "$", "message":
                                                     "a concurrent upload applied some of these rows; retry"}]})
        return
    if apply and accepted and runtime.relay:
        runtime.relay.notify()
    yield summary(upload, verdicts, applied=apply and bool(accepted))


def summary(upload: Upload, verdicts: list[Verdict], applied: bool) -> Outcome:
    counts = {s: 0 for s in ("ok", "applied", "already_applied", "held", "refused")}
    for v in verdicts:
        counts[v.status] += 1
    refused = counts["refused"]
    body = {
        "ok": refused == 0, "dry_run": upload.dry_run, "partial": upload.partial, "rows": len(verdicts),
        "counts": counts, "applied": applied,
        "refused": [asdict(v) for v in verdicts if v.status == "refused"],
        "ignored_sheets": upload.ignored_sheets, "ignored_columns": upload.ignored_columns,
        "verdicts": [asdict(v) for v in verdicts],
    }
    # 200: nothing refused (or a dry run, which reports); 207: applied in part; 422: refused rows
    # and nothing applied.
    status = 200 if refused == 0 or upload.dry_run else 207 if applied else 422
    return Outcome(status, body)
