"""Publish an OrganizationFiled to cso the way an outside system does: plain nats-py, no cso code.

    python publish_filing.py --nats nats://127.0.0.1:4222 --community 510681001014
    NATS_PASSWORD=... python publish_filing.py --user deyang-register --community 510681001014

It publishes the fact on its intake subject, cso.intake.<source>.organization_filed.<province>.
<city>.<county>, with Nats-Msg-Id = event_id (so a retry is dropped as a duplicate), then waits for
registry's receipt, with the same event_id, on cso.receipts.<source>.<verdict>: accepted (then it
is in cso's database, whatever the bus does), refused (with the field, the reason and a code; exit
status 1), waiting (for a fact it follows; another receipt follows) or duplicate. Keep the event
(and publish it again with the same id) until a receipt arrives.

With --user (password from NATS_PASSWORD) it connects as that cso publisher user, whose permissions
allow exactly this: publishing intake facts of its region under its own name, its own inbox
`_INBOX_<user>` (where the JetStream ack arrives), and its own receipts with a plain subscription.
The event's source is the user's name: registry refuses any other under it.
"""

import argparse
import asyncio
import json
import os
import uuid
from datetime import date, datetime, timezone

import nats
from nats.aio.msg import Msg


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--prefix", default="", help="subject namespace, empty in production")
    parser.add_argument("--community", default="510681001014")
    parser.add_argument("--name", default="西城社区志愿服务队")
    parser.add_argument("--category", default="neighbourly_help")
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--user", default="", help="cso publisher user; password in NATS_PASSWORD")
    args = parser.parse_args()
    prefix = args.prefix + "." if args.prefix else ""
    code = args.community
    county_tokens = f"{code[:2]}.{code[:4]}.{code[:6]}"
    # The subject names the publisher, and the event's source must be that name.
    source = args.user or "example-city-register"

    now = datetime.now(timezone.utc).isoformat()
    event = {
        "event_id": str(uuid.uuid4()),
        "type": "OrganizationFiled",
        "version": 1,
        "occurred_at": now,
        "recorded_at": now,
        "source": source,
        "region": code,
        "payload": {
            "organization_id": str(uuid.uuid4()),
            "name": args.name,
            "community_code": code,
            "category": args.category,
            "tier": "filed",
            "filing_number": "EX-2024-001",
            "filed_on": date.today().isoformat(),
        },
    }

    auth = {}
    if args.user:
        auth = {"user": args.user, "password": os.environ["NATS_PASSWORD"],
                "inbox_prefix": f"_INBOX_{args.user}"}
    nc = await nats.connect(args.nats, **auth)
    js = nc.jetstream()
    receipts: asyncio.Queue[dict[str, object]] = asyncio.Queue()

    async def on_receipt(msg: Msg) -> None:
        data = json.loads(msg.data)
        if data.get("event_id") == event["event_id"]:
            await receipts.put({"receipt": msg.subject, **data})

    # A plain subscription, made before publishing: registry's receipts to this publisher.
    sub = await nc.subscribe(f"{prefix}cso.receipts.{source}.>", cb=on_receipt)
    await nc.flush()
    ack = await js.publish(f"{prefix}cso.intake.{source}.organization_filed.{county_tokens}",
                           json.dumps(event).encode(), headers={"Nats-Msg-Id": event["event_id"]})
    print(json.dumps({"published": event["event_id"], "stream": ack.stream, "seq": ack.seq}))
    while True:  # a waiting receipt is followed by the final one
        receipt = await asyncio.wait_for(receipts.get(), args.timeout)
        print(json.dumps({k: receipt[k] for k in ("receipt", "event_id", "verdict", "id", "field", "reason",
                                                  "code") if receipt.get(k) is not None}, ensure_ascii=False))
        if receipt["verdict"] != "waiting":
            break
    await sub.unsubscribe()
    await nc.close()
    if receipt["verdict"] == "refused":
        raise SystemExit(1)


if __name__ == "__main__":
    asyncio.run(main())
