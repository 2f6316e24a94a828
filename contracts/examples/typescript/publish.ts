/**
 * Publish registry facts to cso the way an outside system does, in TypeScript with nats.js:
 * publish, wait for the receipts, ask for those that did not come, resend exactly what registry
 * never took. No cso code; the contract is contracts/README.md.
 *
 *   npm ci && npx tsc -p . && NATS_PASSWORD=... node dist/publish.js \
 *     --nats nats://127.0.0.1:4222 --user guanghan-register --events facts.jsonl
 *   node dist/publish.js --user guanghan-register --community 510681001014,510681001011 --filings 4
 *
 * Each fact goes on cso.intake.<user>.<event>.<province>.<city>.<county> with
 * `Nats-Msg-Id: <event_id>`, its envelope's `source` being the user's name. Registry tells this
 * user what it decided on cso.receipts.<user>.… (a plain subscription, made before publishing:
 * accepted, refused, duplicate, waiting; IntakeLost). What has no receipt after --wait seconds
 * (not connected, or lost on the way) is asked for with the receipts query,
 * cso.query.registry.receipts.<user>: `unknown` there means registry never took the fact, and it
 * is published again with the same event_id (registry applies an id at most once, so a resend of a
 * fact that was only slow changes nothing). A refused fact is reported with its field and reason.
 */
import { randomUUID } from "node:crypto";
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { connect, type NatsConnection } from "@nats-io/transport-node";
import { jetstream, type JetStreamClient } from "@nats-io/jetstream";

type Envelope = { event_id: string; type: string; region: string; source: string; [k: string]: unknown };
type Verdict = { verdict: string; field?: string; reason?: string; code?: string; id?: string };
type Fact = { event: Envelope; verdict?: Verdict };

const QUERY_BATCH = 2000; // ids per receipts query over NATS (a reply must fit in one message)

const { values: opt } = parseArgs({
  options: {
    nats: { type: "string", default: "nats://127.0.0.1:4222" },
    user: { type: "string", default: "" }, // password in NATS_PASSWORD
    prefix: { type: "string", default: "" }, // subject namespace, empty in production
    events: { type: "string" }, // JSON lines of envelopes
    community: { type: "string", default: "510681001014" }, // else file in these (comma-separated)
    filings: { type: "string" }, // that many OrganizationFiled, one a community in turn (default: one each)
    wait: { type: "string", default: "10" }, // seconds to wait for receipts before asking
    rounds: { type: "string", default: "5" }, // ask-and-resend rounds before giving up
    lose: { type: "string", default: "0" }, // drill: do not send the Nth fact the first time
    json: { type: "boolean", default: false }, // last line: the summary as JSON
  },
});
function numeric(name: "wait" | "rounds" | "lose" | "filings"): number {
  const n = Number(opt[name]);
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${name}: expected a number, got ${opt[name]}`);
  return n;
}
const source = opt.user || "example-city-register";
const ns = opt.prefix ? `${opt.prefix}.` : "";

function filing(i: number): Envelope {
  const now = new Date().toISOString();
  const codes = opt.community.split(",");
  const code = codes[i % codes.length];
  return {
    event_id: randomUUID(), type: "OrganizationFiled", version: 1, occurred_at: now, recorded_at: now,
    source, region: code,
    payload: { organization_id: randomUUID(), name: `西城社区志愿服务队${i + 1}`, community_code: code,
               category: "neighbourly_help", tier: "filed", filed_on: now.slice(0, 10) },
  };
}

function readEvents(path: string): Envelope[] {
  return readFileSync(path, "utf8").split("\n").filter((line) => line.trim()).map((line, i) => {
    const e = JSON.parse(line) as Envelope;
    for (const f of ["event_id", "type", "region", "source"] as const) {
      if (typeof e[f] !== "string") throw new Error(`${path} line ${i + 1}: ${f}: missing`);
    }
    if (e.source !== source) throw new Error(`${path} line ${i + 1}: source: must be ${source}, the user`);
    return e;
  });
}

// cso.intake.<source>.<event>.<province>.<city>.<county>; "_" for a tier above the region's.
function intakeSubject(e: Envelope): string {
  const event = e.type.replace(/(?<!^)(?=[A-Z])/g, "_").toLowerCase();
  const r = e.region;
  const tokens = [r.slice(0, 2), r.length >= 4 ? r.slice(0, 4) : "_", r.length >= 6 ? r.slice(0, 6) : "_"];
  return `${ns}cso.intake.${source}.${event}.${tokens.join(".")}`;
}

async function send(js: JetStreamClient, fact: Fact): Promise<void> {
  try {
    // The same event_id each time: JetStream drops a copy within 2 minutes, registry any later one.
    await js.publish(intakeSubject(fact.event), JSON.stringify(fact.event), { msgID: fact.event.event_id });
  } catch (err) {
    console.log(`publish of ${fact.event.event_id} not acknowledged (${err}): the receipts query will tell`);
  }
}

function count(facts: Fact[]): string {
  const n = (v?: string) => facts.filter((f) => f.verdict?.verdict === v).length;
  return `${n("accepted")} accepted, ${n("refused")} refused, ${n("waiting")} waiting, ${n()} without`;
}

async function main(): Promise<number> {
  const facts = new Map<string, Fact>();
  for (const e of opt.events ? readEvents(opt.events) : Array.from({ length: opt.filings ? numeric("filings") : opt.community.split(",").length }, (_, i) => filing(i))) {
    facts.set(e.event_id, { event: e });
  }
  const auth = opt.user ? { user: opt.user, pass: process.env.NATS_PASSWORD, inboxPrefix: `_INBOX_${opt.user}` } : {};
  const nc: NatsConnection = await connect({ servers: opt.nats, ...auth });
  const js = jetstream(nc);
  let wake = () => {};
  let heard = 0; // receipts registry sent us about these facts (the rest came from the query)
  // Done waiting when every fact has its final verdict (a waiting one may still be decided soon).
  const settled = () => [...facts.values()].every((f) => f.verdict && f.verdict.verdict !== "waiting");

  // Subscribed before publishing: every verdict on this publisher's own receipts subject.
  const sub = nc.subscribe(`${ns}cso.receipts.${source}.>`, {
    callback: (err, msg) => {
      if (err) { console.log(`receipts subscription: ${err.message}`); return; }
      if (msg.subject.endsWith(".lost")) { console.log("registry says intake was lost: asking now"); wake(); return; }
      const r = msg.json<Verdict & { event_id?: string; first?: Verdict }>();
      const fact = r.event_id ? facts.get(r.event_id) : undefined;
      if (!fact) return; // a receipt of an earlier run's fact
      heard += 1;
      // duplicate: the event_id was decided before; that first verdict stands.
      fact.verdict = r.verdict === "duplicate" && r.first ? r.first : r;
      if (settled()) wake();
    },
  });
  await nc.flush();

  const lose = numeric("lose");
  // The drill: the lose-th fact's first publish goes nowhere, as a message lost on the way would.
  await Promise.all([...facts.values()].filter((_, i) => i + 1 !== lose).map((f) => send(js, f)));
  console.log(`published ${facts.size} facts as ${source}${lose ? ` (drill: fact ${lose} not sent)` : ""}`);

  const resent = new Set<string>();
  let asked = 0;
  for (let round = 1; round <= numeric("rounds"); round++) {
    let timer: NodeJS.Timeout | undefined;
    await new Promise<void>((resolve) => {
      wake = resolve;
      timer = setTimeout(resolve, numeric("wait") * 1000);
      if (settled()) resolve();
    });
    clearTimeout(timer);
    console.log(`round ${round}: receipts so far: ${count([...facts.values()])}`);
    // Waiting is a verdict too: registry holds the fact and will send its final receipt itself.
    const open = [...facts.values()].filter((f) => !f.verdict);
    if (open.length === 0) break;
    // Ask registry what it did with each fact without a final receipt.
    const again: Fact[] = [];
    const answered = new Map<string, number>();
    asked += open.length;
    for (let i = 0; i < open.length; i += QUERY_BATCH) {
      const batch = open.slice(i, i + QUERY_BATCH);
      const reply = await nc.request(`${ns}cso.query.registry.receipts.${source}`,
        JSON.stringify({ event_ids: batch.map((f) => f.event.event_id) }), { timeout: 10_000 });
      const answer = reply.json<{ ok: boolean; errors?: unknown; receipts: (Verdict & { event_id: string })[] }>();
      if (!answer.ok) throw new Error(`receipts query refused: ${JSON.stringify(answer.errors)}`);
      for (const r of answer.receipts) {
        const fact = facts.get(r.event_id)!;
        answered.set(r.verdict, (answered.get(r.verdict) ?? 0) + 1);
        if (r.verdict === "unknown") again.push(fact); else fact.verdict = r;
      }
    }
    const said = ["accepted", "refused", "waiting", "unknown"].filter((v) => answered.has(v))
      .map((v) => `${answered.get(v)} ${v}`).join(", ");
    console.log(`round ${round}: asked registry about ${open.length}: ${said}` +
                (again.length ? `; sending the ${again.length} unknown again` : ""));
    if (again.length === 0 && [...facts.values()].every((f) => f.verdict)) break;
    await Promise.all(again.map((f) => { resent.add(f.event.event_id); return send(js, f); }));
  }
  await sub.drain();
  await nc.close();

  const all = [...facts.values()];
  console.log(`summary: ${all.length} facts, ${count(all)}, ${resent.size} sent again; ${heard} receipts heard, ${asked} asked for`);
  for (const f of all) {
    const v = f.verdict;
    if (v?.verdict === "refused") console.log(`  refused ${f.event.event_id} ${v.field}: ${v.reason}${v.code ? ` (${v.code})` : ""}`);
    if (resent.has(f.event.event_id)) console.log(`  sent again ${f.event.event_id}: ${v?.verdict ?? "no receipt"}`);
    if (!v) console.log(`  no receipt ${f.event.event_id}: keep it and run again`);
  }
  if (opt.json) {
    const pick = (v: string) => all.filter((f) => f.verdict?.verdict === v);
    console.log(JSON.stringify({
      accepted: pick("accepted").map((f) => f.event.event_id),
      refused: pick("refused").map((f) => ({ event_id: f.event.event_id, field: f.verdict!.field, reason: f.verdict!.reason, code: f.verdict!.code })),
      waiting: pick("waiting").map((f) => f.event.event_id),
      resent: [...resent],
      heard,
      asked,
      without: all.filter((f) => !f.verdict).map((f) => f.event.event_id),
    }));
  }
  return all.every((f) => f.verdict) ? 0 : 1;
}

main().then((code) => { process.exitCode = code; }, (err: unknown) => {
  console.error(err instanceof Error ? err.message : err);
  process.exitCode = 2;
});
