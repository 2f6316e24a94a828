"""notify's pure core: subscription validation, matching, rendering, signatures, schedules."""

from __future__ import annotations

import time as _time
from datetime import date, datetime, time, timedelta, timezone
from typing import Any
from uuid import uuid4

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from contracts import ContractError
from services.notify import domain as d

NAMES = {"51": "四川省", "5111": "乐山市", "511102": "市中区", "511102004": "大佛街道",
         "511102004001": "篦子街社区居委会"}
T0 = datetime(2025, 6, 1, 1, 0, tzinfo=timezone.utc)


def sub(**over: Any) -> dict[str, Any]:
    return {"recipient": "leshan.mzj", "channels": {"inbox": True}, "region": "511102"} | over


def fields_of(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ValidationError) as info:
        d.SubscriptionIn.model_validate(data)
    return [e.field for e in ContractError.from_validation(info.value).errors]


def test_subscription_defaults() -> None:
    s = d.SubscriptionIn.model_validate(sub())
    assert s.language == "zh" and s.frequency == "immediate" and s.timezone == "Asia/Shanghai"
    assert s.events == ["TargetStatusChanged", "DeadlineReminder"] and s.effective_digest_time is None
    digest = d.SubscriptionIn.model_validate(sub(frequency="digest"))
    assert digest.effective_digest_time == time(18, 0)
    assert d.SubscriptionIn.model_validate(sub(frequency="digest", digest_time="07:30")).effective_digest_time \
        == time(7, 30)


@pytest.mark.parametrize(("over", "field"), [
    ({"channels": {}}, "channels"),
    ({"channels": {"email": "not-an-address"}}, "channels.email"),
    ({"channels": {"webhook": {"url": "ftp://x"}}}, "channels.webhook.url"),
    ({"channels": {"webhook": {"url": "https://x.cn/h", "secret": "short"}}}, "channels.webhook.secret"),
    ({"region": "5111x"}, "region"),
    ({"region": "51110"}, "region"),
    ({"events": ["TargetStatusChanged", "Nonsense"]}, "events.1"),
    ({"events": []}, "events"),
    ({"statuses": ["at_risk", "bad"]}, "statuses.1"),
    ({"statuses": ["at_risk"], "events": ["OrganizationFiled"]}, "statuses"),
    ({"frequency": "weekly"}, "frequency"),
    ({"digest_time": "08:00"}, "digest_time"),
    ({"frequency": "digest", "digest_time": "25:00"}, "digest_time"),
    ({"timezone": "Mars/Olympus"}, "timezone"),
    ({"language": "fr"}, "language"),
    ({"recipient": "a/b"}, "recipient"),
    ({"colour": "red"}, "colour"),
])
def test_subscription_errors_name_the_field(over: dict[str, Any], field: str) -> None:
    assert field in fields_of(sub(**over))


def test_missing_fields_are_named() -> None:
    assert set(fields_of({})) == {"recipient", "channels", "region"}


def rule(**over: Any) -> d.Rule:
    base: dict[str, Any] = {"id": uuid4(), "region": "511102", "include_subregions": False,
                            "events": frozenset({"TargetStatusChanged", "OrganizationFiled", d.REMINDER}),
                            "statuses": None, "created_at": T0}
    return d.Rule(**(base | over))


def test_matching_by_kind_region_status_and_time() -> None:
    r = rule()
    later = T0 + timedelta(hours=1)
    assert d.matches(r, "TargetStatusChanged", "511102", later, "at_risk")
    assert not d.matches(r, "CoverageChanged", "511102", later)
    assert not d.matches(r, "OrganizationFiled", "511102004001", later)       # below, not asked
    assert d.matches(rule(include_subregions=True), "OrganizationFiled", "511102004001", later)
    assert not d.matches(rule(include_subregions=True), "OrganizationFiled", "511103004001", later)
    assert not d.matches(r, "TargetStatusChanged", "5111", later, "at_risk")  # above: not theirs
    only = rule(statuses=frozenset({"at_risk", "missed"}))
    assert d.matches(only, "TargetStatusChanged", "511102", later, "missed")
    assert not d.matches(only, "TargetStatusChanged", "511102", later, "met")
    assert d.matches(only, "OrganizationFiled", "511102", later)              # statuses filter targets only
    # History from before the subscription (a replay) does not reach it.
    assert not d.matches(r, "TargetStatusChanged", "511102", T0 - timedelta(days=2), "at_risk")
    assert d.matches(r, "TargetStatusChanged", "511102", T0 - timedelta(seconds=30), "at_risk")


def test_digest_day_in_local_time() -> None:
    at = time(18, 0)
    # 09:59 UTC is 17:59 in Shanghai: not yet; 10:00 UTC is 18:00: today's digest.
    assert d.digest_day(datetime(2025, 6, 1, 9, 59, tzinfo=timezone.utc), at, "Asia/Shanghai") is None
    assert d.digest_day(datetime(2025, 6, 1, 10, 0, tzinfo=timezone.utc), at, "Asia/Shanghai") == date(2025, 6, 1)
    # 23:30 UTC on 1 June is 07:30 on 2 June in Shanghai.
    assert d.digest_day(datetime(2025, 6, 1, 23, 30, tzinfo=timezone.utc), time(7, 0),
                        "Asia/Shanghai") == date(2025, 6, 2)
    assert d.digest_day(datetime(2025, 6, 1, 23, 30, tzinfo=timezone.utc), time(7, 0), "Europe/London") is None


def test_backoff_doubles_with_jitter_and_a_cap() -> None:
    assert d.backoff_schedule(5, 30, 3600) == [30, 60, 120, 240]
    assert d.backoff_schedule(10, 30, 300)[-1] == 300
    assert d.backoff(1, 30, 3600, 0.0) == 15 and d.backoff(1, 30, 3600, 0.999) < 30
    assert d.backoff(3, 30, 3600, 0.5) == pytest.approx(90)
    assert d.backoff(50, 30, 3600, 1.0) == 3600
    with pytest.raises(ValueError):
        d.backoff(0, 30, 3600, 0.5)


@given(attempt=st.integers(1, 60), rand=st.floats(0, 1))
def test_backoff_within_half_to_full_nominal(attempt: int, rand: float) -> None:
    nominal = min(600.0, 2.0 * 2 ** (attempt - 1))
    assert nominal / 2 <= d.backoff(attempt, 2.0, 600.0, rand) <= nominal


def test_signature_verifies_and_rejects_tampering() -> None:
    body = '{"kind":"TargetStatusChanged","region_path":"四川省 乐山市 市中区"}'.encode()
    now = int(_time.time())
    signature = d.sign("s3cret-s3cret-s3cret", now, body)
    assert signature.startswith("sha256=") and len(signature) == 7 + 64
    assert d.verify("s3cret-s3cret-s3cret", str(now), signature, body, now)
    assert not d.verify("another-secret-entirely", str(now), signature, body, now)
    assert not d.verify("s3cret-s3cret-s3cret", str(now), signature, body + b" ", now)
    assert not d.verify("s3cret-s3cret-s3cret", str(now + 1), signature, body, now)
    assert not d.verify("s3cret-s3cret-s3cret", str(now), signature, body, now + 301)  # replayed late
    assert not d.verify("s3cret-s3cret-s3cret", "yesterday", signature, body, now)
    # The documented recipe, spelled out with the standard library only.
    import hashlib
    import hmac
    expected = hmac.new(b"s3cret-s3cret-s3cret", f"{now}.".encode() + body, hashlib.sha256).hexdigest()
    assert signature == "sha256=" + expected


def status_notice(**payload: Any) -> d.Notice:
    base = {"target_id": "leshan-avg-urban-class-a@511102", "region_code": "511102",
            "metric": "avg_orgs_per_urban_community", "previous_status": "on_track", "status": "at_risk",
            "value": 9.5, "threshold": 15.0, "deadline": "2025-12-31"}
    return d.Notice(event_id=uuid4(), kind="TargetStatusChanged", region="511102", occurred_at=T0,
                    payload=base | payload,
                    target=d.TargetInfo(title="A类县区城市社区平均拥有社区社会组织不少于15个"))


def test_target_status_renders_in_chinese_with_path_figure_threshold_deadline() -> None:
    m = d.render(status_notice(), NAMES, "zh")
    assert m.subject.startswith("【目标状态变化】四川省 乐山市 市中区 ")
    for text in ("进展正常 → 有风险", "当前值：9.5", "目标值：≥ 15", "截止日期：2025-12-31",
                 "地区：四川省 乐山市 市中区", "城市社区平均拥有社区社会组织数", "2025-06-01 09:00"):
        assert text in m.text, text
    assert "四川省 乐山市 市中区" in m.headline and "当前 9.5" in m.headline


def test_english_fallback_and_shares_as_percent() -> None:
    n = status_notice(metric="towns_with_hub_share", value=0.625, threshold=0.75, previous_status=None,
                      status="missed")
    m = d.render(n, NAMES, "en")
    assert m.subject.startswith("[Target status changed] 四川省 乐山市 市中区: ")
    for text in ("none → missed", "Current value: 62.5%", "Threshold: ≥ 75%", "Deadline: 2025-12-31"):
        assert text in m.text, text
    assert "n/a" in d.render(status_notice(value=None), NAMES, "en").text


def test_organization_filed_names_the_community_by_full_path() -> None:
    n = d.Notice(event_id=uuid4(), kind="OrganizationFiled", region="511102004001", occurred_at=T0,
                 payload={"name": "篦子街社区舞蹈队", "community_code": "511102004001",
                          "category": "culture_sports", "tier": "filed", "filed_on": "2025-05-30",
                          "organization_id": str(uuid4())})
    m = d.render(n, NAMES, "zh")
    assert "四川省 乐山市 市中区 大佛街道 篦子街社区居委会" in m.subject
    assert "篦子街社区舞蹈队" in m.subject and "类别：文体活动类" in m.text and "organization_id" not in m.text
    assert d.render(n, NAMES, "en").subject == \
        "[Organization filed] 四川省 乐山市 市中区 大佛街道 篦子街社区居委会: 篦子街社区舞蹈队"
    hub = d.Notice(event_id=uuid4(), kind="HubDissolved", region="511102004", occurred_at=T0,
                   payload={"hub_id": str(uuid4()), "reason": "合并", "dissolved_on": "2026-03-01"})
    gone = d.render(hub, NAMES, "zh")
    assert gone.subject == "【枢纽型组织撤销】四川省 乐山市 市中区 大佛街道" and "原因：合并" in gone.text
    # Unknown names fall back to the codes.
    assert d.region_path("511102006001", NAMES) == "四川省 乐山市 市中区 511102006 511102006001"


def test_reminder_and_digest_render() -> None:
    n = d.Notice(event_id=uuid4(), kind=d.REMINDER, region="5111", occurred_at=T0,
                 payload={"target_id": "leshan-streets-hub", "title": "街道枢纽型社区社会组织全覆盖",
                          "metric": "streets_with_hub_share", "threshold": 1.0, "comparison": ">=",
                          "deadline": "2025-12-31", "days_left": 30})
    m = d.render(n, NAMES, "zh")
    assert "距截止日期 2025-12-31 还有 30 天" in m.subject and "目标值：≥ 100%" in m.text
    lines = [d.DigestLine(T0 + timedelta(hours=2), "second"), d.DigestLine(T0, "first")]
    digest = d.render_digest(date(2025, 6, 1), "5111", NAMES, lines, "zh")
    assert digest.subject == "【每日摘要】四川省 乐山市 2025-06-01 共 2 项变化"
    assert digest.text.index("09:00 first") < digest.text.index("11:00 second")
    assert "1 change" in d.render_digest(date(2025, 6, 1), "5111", NAMES, lines[:1], "en").subject


def test_delivery_ids_are_stable_and_distinct() -> None:
    e, s = uuid4(), uuid4()
    assert d.delivery_id(e, s, "email") == d.delivery_id(e, s, "email")
    assert len({d.delivery_id(e, s, c) for c in d.CHANNELS}) == 3
    assert d.outcome_event_id(e, "sent") != d.outcome_event_id(e, "failed")


# --- reminder lead times ------------------------------------------------------------------------

LEADS = st.lists(st.integers(0, d.MAX_REMINDER_DAYS), min_size=1, max_size=10, unique=True)


def test_lead_due_is_the_nearest_lead_not_passed() -> None:
    deadline = date(2025, 12, 31)
    assert d.lead_due(deadline, date(2025, 12, 21), (30, 7)) == 30      # 10 left: 30 reached, 7 not
    assert d.lead_due(deadline, date(2025, 12, 21), (10,)) == 10
    assert d.lead_due(deadline, date(2025, 12, 1), (10,)) is None       # 30 left: not yet
    assert d.lead_due(deadline, date(2025, 12, 31), (30, 7, 0)) == 0
    assert d.lead_due(deadline, date(2026, 1, 1), (30, 7)) is None      # past


@given(leads=LEADS, start=st.integers(0, 400))
def test_checked_daily_each_lead_is_reminded_once_and_none_stale(leads: list[int], start: int) -> None:
    """A subscription checked every day from `start` days before a deadline (made then, or the
    deadline learned then) is reminded once of each lead still ahead, once of the nearest lead
    already reached, and of nothing after the deadline, in decreasing order of lead."""
    deadline = date(2026, 12, 31)
    reminded: list[int] = []
    for left in range(start, -3, -1):
        lead = d.lead_due(deadline, deadline - timedelta(days=left), leads)
        if lead is not None and lead not in reminded:
            reminded.append(lead)
    ahead = sorted((lead for lead in leads if lead < start), reverse=True)
    reached = [min(lead for lead in leads if lead >= start)] if any(lead >= start for lead in leads) else []
    assert reminded == reached + ahead


def test_reminder_days_default_sorted_and_deduplicated() -> None:
    base = {"recipient": "x", "region": "5111", "channels": {"inbox": True}}
    assert d.SubscriptionIn.model_validate(base).reminder_days == [30, 7]
    assert d.SubscriptionIn.model_validate(base | {"reminder_days": [7, 90, 7, 0]}).reminder_days == [90, 7, 0]
