"""Events that several tests publish: a county's divisions (real NBS codes) and a target's status
change, on the subjects their publishers use."""

from __future__ import annotations

from datetime import date
from typing import Any

from nats.aio.client import Client as NATS

from contracts import Envelope, make_event
from contracts import events as ev
from cso.settings import Settings
from tests.support import publish

# Real NBS 2023 codes and names of 乐山市 市中区 (511102).
SHIZHONG = ev.DivisionsImported(
    edition="2023",
    province=ev.DivisionRef(code="51", name="四川省"),
    city=ev.DivisionRef(code="5111", name="乐山市"),
    county=ev.DivisionRef(code="511102", name="市中区"),
    townships=[ev.TownshipDivision(code="511102004", name="大佛街道", kind="street"),
               ev.TownshipDivision(code="511102006", name="通江街道", kind="street")],
    communities=[ev.CommunityDivision(code="511102004001", name="篦子街社区居委会", kind="urban"),
                 ev.CommunityDivision(code="511102006001", name="通江社区居委会", kind="urban")],
)


def status_changed(status: str = "at_risk", target: str = "leshan-avg-urban-class-a", value: float = 9.5,
                   previous: str | None = "on_track", region: str = "511102") -> Envelope[Any]:
    payload = ev.TargetStatusChanged(
        target_id=f"{target}@{region}", region_code=region, metric="avg_orgs_per_urban_community",
        previous_status=previous, status=status, value=value, threshold=15.0, deadline=date(2025, 12, 31),
        title="一类县区城市社区平均拥有社区社会组织不少于15个", comparison=">=")
    return make_event(payload, source="cso-targets")


async def publish_status(nc: NATS, settings: Settings, envelope: Envelope[Any],
                         msg_id: str | None = None) -> None:
    subject = settings.topology.event_subject("TargetStatusChanged", envelope.region)
    await publish(nc, subject, envelope, msg_id=msg_id)
