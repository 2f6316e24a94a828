"""Publish an OrganizationFiled to cso the way an outside system does: plain nats-py, no cso code.

    python publish_filing.py --nats nats://127.0.0.1:4222 --community 510681001014

It publishes the fact on the intake subject with Nats-Msg-Id = event_id (so a retry is dropped as
a duplicate), then waits for cso's receipt: the accepted event, with the same event_id, on
cso.registry.organization_filed.<province>.<city>.<county>. Keep the event (and publish it again
with the same id) until the receipt arrives: then it is in cso's database, whatever the bus does.
A refused fact appears on cso.deadletter.registry with the reason instead.
"""

import argparse
import asyncio
import json
import uuid
from datetime import date, datetime, timezone

import nats
from nats.aio.msg import Msg
from nats.js.api import ConsumerConfig, DeliverPolicy


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nats", default="nats://127.0.0.1:4222")
    parser.add_argument("--prefix", default="", help="subject namespace, empty in production")
    parser.add_argument("--community", default="510681001014")
    parser.add_argument("--name", default="西城社区志愿服务队")
    parser.add_argument("--category", default="neighbourly_help")
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args()
    prefix = args.prefix + "." if args.prefix else ""
    code = args.community
    county_tokens = f"{code[:2]}.{code[:4]}.{code[:6]}"

    now = datetime.now(timezone.utc).isoformat()
    event = {
        "event_id": str(uuid.uuid4()),
        "type": "OrganizationFiled",
        "version": 1,
        "occurred_at": now,
        "recorded_at": now,
        "source": "example-city-register",
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

    nc = await nats.connect(args.nats)
    js = nc.jetstream()
    receipt: asyncio.Future[dict[str, object]] = asyncio.get_running_loop().create_future()

    async def on_event(msg: Msg) -> None:
        data = json.loads(msg.data)
        if data.get("event_id") == event["event_id"] and not receipt.done():
            receipt.set_result({"subject": msg.subject, **data})

    sub = await js.subscribe(f"{prefix}cso.registry.organization_filed.{county_tokens}", cb=on_event,
                             config=ConsumerConfig(deliver_policy=DeliverPolicy.NEW))
    ack = await js.publish(f"{prefix}cso.intake.organization_filed.{county_tokens}",
                           json.dumps(event).encode(), headers={"Nats-Msg-Id": event["event_id"]})
    print(json.dumps({"published": event["event_id"], "stream": ack.stream, "seq": ack.seq}))
    accepted = await asyncio.wait_for(receipt, args.timeout)
    print(json.dumps({"receipt": accepted["subject"], "event_id": accepted["event_id"]}))
    await sub.unsubscribe()
    await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
