"""notify's pure core: what a subscription is, who gets what, how a message reads, how a webhook is
signed, when a failed delivery is retried, when a reminder or a digest is due.

No I/O here (the time zone database aside): the edges (store, sender, scheduler, API) call in.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from uuid import UUID, uuid5
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from contracts.codes import RegionCode, ancestors
from contracts.events import TargetStatus
from contracts.subjects import ABSENT, snake

Channel = Literal["email", "webhook", "inbox"]
Frequency = Literal["immediate", "digest"]
Language = Literal["zh", "en"]

CHANNELS: tuple[Channel, ...] = ("email", "webhook", "inbox")
DEFAULT_TIMEZONE = "Asia/Shanghai"
DEFAULT_DIGEST_TIME = time(18, 0)

# What subscriptions name besides contract events: a target's deadline is near (targets'
# TargetDeadlineApproaching), a day's digest (notify's own).
REMINDER = "DeadlineReminder"
TASK_REMINDER = "TaskDeadlineReminder"      # a plan task's deadline is near (targets' TaskDeadlineApproaching)
REMINDERS: tuple[str, ...] = (REMINDER, TASK_REMINDER)
DIGEST = "Digest"

# Event types a subscription may name (the events notify consumes, and the reminders it makes).
SUBSCRIBABLE: tuple[str, ...] = (
    "TargetStatusChanged", "CoverageChanged", "TaskStatusChanged", "TaskOverdue", "PlanAccepted",
    "OrganizationFiled", "OrganizationRegistered", "OrganizationUpdated", "OrganizationDeregistered",
    "HubEstablished", "HubDissolved", "IncubationBaseOpened", "IncubationBaseClosed",
    "PartyOrganizationFormed", "PartyOrganizationDissolved",
    "TrainingSessionScheduled", "TrainingCompleted", "TalentPoolMemberAdded", "TalentPoolMemberRemoved",
    REMINDER, TASK_REMINDER,
)
DEFAULT_EVENTS: tuple[str, ...] = ("TargetStatusChanged", REMINDER)
# Days before a deadline a subscription is reminded (each subscription may set its own).
DEFAULT_REMINDER_DAYS: tuple[int, ...] = (30, 7)
MAX_REMINDER_DAYS = 366

# A subscription hears what is recorded from its creation on (with this much slack for clocks),
# so a consumer replaying a stream's history never floods a new subscriber with old news.
HISTORY_SLACK = timedelta(minutes=1)

# Deterministic ids: the same delivery, reminder or digest always gets the same id.
_NAMESPACE = UUID("8a6f2d6e-51c4-4c1e-9b0a-6e6f74696679")

_EMAIL = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")
_URL = re.compile(r"^https?://[^\s/?#]+(?:[/?#]\S*)?$")
_RECIPIENT = re.compile(r"^[\w.@+-]{1,200}$")


# --- subscriptions ----------------------------------------------------------------------------


def _subscribable(name: str) -> str:
    if name not in SUBSCRIBABLE:
        raise ValueError(f"unknown event type {name!r}; one of {', '.join(SUBSCRIBABLE)}")
    return name


EventName = Annotated[str, AfterValidator(_subscribable)]
LeadDays = Annotated[int, Field(ge=0, le=MAX_REMINDER_DAYS)]


class WebhookIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    url: str = Field(max_length=2000)
    # The HMAC key; generated when not given (and shown once, in the response that created it).
    secret: str | None = Field(default=None, min_length=16, max_length=200)

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not _URL.match(url):
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        return url


class ChannelsIn(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    email: str | None = Field(default=None, max_length=320)
    webhook: WebhookIn | None = None
    inbox: bool = False

    @field_validator("email")
    @classmethod
    def _email(cls, email: str | None) -> str | None:
        if email is not None and not _EMAIL.match(email):
            raise ValueError(f"{email!r} is not an e-mail address")
        return email

    @model_validator(mode="after")
    def _some_channel(self) -> ChannelsIn:
        if self.email is None and self.webhook is None and not self.inbox:
            raise ValueError("give at least one channel: email, webhook or inbox: true")
        return self

    def names(self) -> list[Channel]:
        out: list[Channel] = []
        if self.email is not None:
            out.append("email")
        if self.webhook is not None:
            out.append("webhook")
        if self.inbox:
            out.append("inbox")
        return out


class SubscriptionIn(BaseModel):
    """A subscription as the API takes it: who, what, where and how often."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recipient: str
    language: Language = "zh"
    channels: ChannelsIn
    events: list[EventName] = Field(default_factory=lambda: list(DEFAULT_EVENTS), min_length=1, max_length=50)
    # For TargetStatusChanged: the statuses to hear of (none given: every status).
    statuses: list[TargetStatus] | None = Field(default=None, min_length=1)
    region: RegionCode
    include_subregions: bool = False
    frequency: Frequency = "immediate"
    digest_time: time | None = None
    timezone: str = DEFAULT_TIMEZONE
    # For DeadlineReminder: how many days before a deadline to remind (0: on the day itself).
    reminder_days: list[LeadDays] = Field(default_factory=lambda: list(DEFAULT_REMINDER_DAYS),
                                          min_length=1, max_length=10)

    @field_validator("recipient")
    @classmethod
    def _recipient(cls, recipient: str) -> str:
        if not _RECIPIENT.match(recipient):
            raise ValueError("1 to 200 letters, digits or . _ @ + - (it names the inbox in URLs)")
        return recipient

    @field_validator("events")
    @classmethod
    def _events(cls, events: list[str]) -> list[str]:
        return list(dict.fromkeys(events))

    @field_validator("reminder_days")
    @classmethod
    def _reminder_days(cls, days: list[int]) -> list[int]:
        return sorted(set(days), reverse=True)

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, name: str) -> str:
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {name!r} (an IANA name such as Asia/Shanghai)") from None
        return name

    @model_validator(mode="after")
    def _consistent(self) -> SubscriptionIn:
        if self.statuses is not None and "TargetStatusChanged" not in self.events:
            raise ValueError("statuses: statuses filter TargetStatusChanged, which events does not name")
        if self.frequency == "immediate" and self.digest_time is not None:
            raise ValueError("digest_time: only a digest subscription (frequency: digest) has one")
        if "reminder_days" in self.model_fields_set and not set(REMINDERS) & set(self.events):
            raise ValueError(f"reminder_days: lead times are for {' and '.join(REMINDERS)}, which events "
                             "does not name")
        return self

    @property
    def effective_digest_time(self) -> time | None:
        if self.frequency != "digest":
            return None
        return self.digest_time or DEFAULT_DIGEST_TIME


@dataclass(frozen=True)
class Rule:
    """The part of a stored subscription that decides who gets what."""

    id: UUID
    region: str
    include_subregions: bool
    events: frozenset[str]
    statuses: frozenset[str] | None
    created_at: datetime
    reminder_days: tuple[int, ...] = DEFAULT_REMINDER_DAYS


def region_matches(subscribed: str, include_subregions: bool, region: str) -> bool:
    """An event about `region` concerns a subscription to `subscribed` (and, if asked, below)."""
    return region == subscribed or (include_subregions and region.startswith(subscribed))


class Screen:
    """Whether any live subscription can match an event, from its subject alone, before its body is
    parsed: `cso.<context>.<event>.<province>.<city>.<county>` names its type and its region down to
    the county. Registry's and training's events that no subscription names, or whose region no
    subscription covers, are skipped unparsed; anything else (targets' and the divisions' events,
    which also feed deadlines and names) is let through. It never skips an event that `matches`
    some subscription: it answers yes whenever the region below the county could still match."""

    SCREENED_CONTEXTS = frozenset({"registry", "training"})

    def __init__(self, rules: Iterable[tuple[str, str, bool]]) -> None:
        # snake-case event -> [(subscribed region, include_subregions)]
        self.by_event: dict[str, list[tuple[str, bool]]] = {}
        for kind, region, include_subregions in rules:
            self.by_event.setdefault(snake(kind), []).append((region, include_subregions))

    def __call__(self, subject: str) -> bool:
        tokens = subject.split(".")[-6:]
        if len(tokens) < 6 or tokens[1] not in self.SCREENED_CONTEXTS:
            return True
        rules = self.by_event.get(tokens[2])
        if not rules:
            return False
        province, city, county = tokens[3:6]
        if county == ABSENT:
            # A region above the county: the subject holds all of it.
            region = city if city != ABSENT else province
            return any(region_matches(s, include, region) for s, include in rules)
        # A county or below it: only its first six digits are known.
        return any(s.startswith(county) or (include and county.startswith(s)) for s, include in rules)


def matches(rule: Rule, kind: str, region: str, recorded_at: datetime, status: str | None = None) -> bool:
    """Whether an event of `kind` about `region` (a target's new `status`) reaches this rule."""
    if kind not in rule.events:
        return False
    if recorded_at < rule.created_at - HISTORY_SLACK:
        return False
    if kind == "TargetStatusChanged" and rule.statuses is not None and status not in rule.statuses:
        return False
    return region_matches(rule.region, rule.include_subregions, region)


# --- reminders --------------------------------------------------------------------------------


def lead_due(deadline: date, today: date, leads: Sequence[int]) -> int | None:
    """The subscription's lead time reached today, if any: the smallest one not yet passed (10 days
    before, with leads 30 and 7, it is 30). A subscription made late is reminded once of where the
    deadline stands, never of a lead already passed as well; after the deadline, nothing."""
    left = (deadline - today).days
    if left < 0:
        return None
    reached = [lead for lead in leads if left <= lead]
    return min(reached) if reached else None


@dataclass(frozen=True)
class Deadline:
    """A deadline notify has learned from an event (targets' own: notify keeps no catalogue), kept
    by `key` (a target instance's id): the latest fact about it (`as_of`) wins."""

    key: str
    kind: str                       # what a subscription names to hear its reminders
    region: str
    deadline: date
    title: str
    details: Mapping[str, Any]      # metric, threshold, comparison, the latest status and value
    as_of: datetime
    event_id: UUID


def reminder_notice(d: Deadline, lead: int, today: date, now: datetime) -> Notice:
    """The reminder of `d` at lead time `lead`, made `today`: how many days are left, and what the
    deadline's latest event said of it."""
    payload = dict(d.details) | {"title": d.title, "deadline": d.deadline.isoformat(),
                                 "days_left": (d.deadline - today).days, "lead_days": lead}
    return Notice(event_id=reminder_event_id(d.key, d.deadline, lead), kind=d.kind, region=d.region,
                  occurred_at=now, payload=payload)


def reminder_event_id(deadline_key: str, deadline: date, lead: int) -> UUID:
    """One reminder per deadline and lead time, whoever hears it: each subscription gets a delivery
    of it per channel (delivery_id), so a replica or a restart repeats nothing."""
    return uuid5(_NAMESPACE, f"reminder:{deadline_key}:{deadline.isoformat()}:{lead}")


# --- ids --------------------------------------------------------------------------------------


def delivery_id(event_id: UUID, subscription_id: UUID, channel: str) -> UUID:
    return uuid5(_NAMESPACE, f"delivery:{event_id}:{subscription_id}:{channel}")


def digest_event_id(subscription_id: UUID, day: date) -> UUID:
    return uuid5(_NAMESPACE, f"digest:{subscription_id}:{day.isoformat()}")


def digest_flush_id(subscription_id: UUID, at: datetime) -> UUID:
    return uuid5(_NAMESPACE, f"digest-flush:{subscription_id}:{at.isoformat()}")


def outcome_event_id(delivery: UUID, outcome: str) -> UUID:
    return uuid5(_NAMESPACE, f"{outcome}:{delivery}")


# --- schedules --------------------------------------------------------------------------------


def backoff(attempt: int, base: float, cap: float, rand: float) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based): the nominal delay
    base·2^(attempt-1), capped, with equal jitter: half fixed, half scaled by `rand` in [0, 1)."""
    if attempt < 1:
        raise ValueError("attempt: counts from 1")
    nominal = min(cap, base * 2.0 ** (attempt - 1))
    return nominal / 2 + nominal / 2 * min(max(rand, 0.0), 1.0)


def backoff_schedule(max_attempts: int, base: float, cap: float) -> list[float]:
    """The nominal delays between `max_attempts` attempts (before jitter), for documentation."""
    return [min(cap, base * 2.0 ** (a - 1)) for a in range(1, max_attempts)]


def digest_day(now: datetime, at: time, tz: str) -> date | None:
    """The local day whose digest is due at `now` (its local time reached), else None."""
    local = now.astimezone(ZoneInfo(tz))
    return local.date() if local.time().replace(tzinfo=None) >= at else None


# --- webhook signatures -----------------------------------------------------------------------


def sign(secret: str, timestamp: int, body: bytes) -> str:
    """X-Cso-Signature: "sha256=" + hex HMAC-SHA256 of `timestamp + "." + body` under the secret."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return "sha256=" + mac.hexdigest()


def verify(secret: str, timestamp: str, signature: str, body: bytes, now: float,
           tolerance: float = 300.0) -> bool:
    """What a receiver does: recompute, compare in constant time, refuse stale timestamps."""
    try:
        ts = int(timestamp)
    except ValueError:
        return False
    if abs(now - ts) > tolerance:
        return False
    return hmac.compare_digest(sign(secret, ts, body), signature)


# --- rendering --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TargetInfo:
    """What the catalogue says of a target: its title and how its threshold compares."""

    title: str
    comparison: str = ">="


@dataclass(frozen=True)
class Notice:
    """Something to tell subscribers: an event, or a reminder notify made itself."""

    event_id: UUID
    kind: str
    region: str
    occurred_at: datetime
    payload: Mapping[str, Any]
    target: TargetInfo | None = None


@dataclass(frozen=True)
class Message:
    subject: str
    text: str
    headline: str          # one line, for digests


@dataclass(frozen=True)
class DigestLine:
    at: datetime
    headline: str


KIND_LABELS: dict[str, tuple[str, str]] = {
    "TargetStatusChanged": ("目标状态变化", "Target status changed"),
    "CoverageChanged": ("覆盖情况变化", "Coverage changed"),
    "TaskStatusChanged": ("任务状态变化", "Task status changed"),
    "TaskOverdue": ("任务逾期", "Task overdue"),
    "PlanAccepted": ("方案验收", "Plan accepted"),
    "OrganizationFiled": ("社区社会组织备案", "Organization filed"),
    "OrganizationRegistered": ("社会组织登记", "Organization registered"),
    "OrganizationUpdated": ("组织信息变更", "Organization updated"),
    "OrganizationDeregistered": ("组织注销", "Organization deregistered"),
    "HubEstablished": ("枢纽型组织成立", "Hub established"),
    "HubDissolved": ("枢纽型组织撤销", "Hub dissolved"),
    "IncubationBaseOpened": ("培育基地启用", "Incubation base opened"),
    "IncubationBaseClosed": ("培育基地关闭", "Incubation base closed"),
    "PartyOrganizationFormed": ("党组织成立", "Party organization formed"),
    "PartyOrganizationDissolved": ("党组织撤销", "Party organization dissolved"),
    "TrainingSessionScheduled": ("培训安排", "Training session scheduled"),
    "TrainingCompleted": ("培训完成", "Training completed"),
    "TalentPoolMemberAdded": ("人才库新增成员", "Talent pool member added"),
    "TalentPoolMemberRemoved": ("人才库移除成员", "Talent pool member removed"),
    REMINDER: ("目标截止提醒", "Deadline reminder"),
    TASK_REMINDER: ("任务截止提醒", "Task deadline reminder"),
    DIGEST: ("每日摘要", "Daily digest"),
}

STATUS_LABELS: dict[str, tuple[str, str]] = {
    "met": ("已达标", "met"),
    "on_track": ("进展正常", "on track"),
    "at_risk": ("有风险", "at risk"),
    "missed": ("未完成", "missed"),
}

METRIC_LABELS: dict[str, tuple[str, str]] = {
    "orgs": ("社区社会组织数", "organizations"),
    "avg_orgs_per_urban_community": ("城市社区平均拥有社区社会组织数", "organizations per urban community"),
    "avg_orgs_per_rural_community": ("农村社区平均拥有社区社会组织数", "organizations per rural community"),
    "streets_with_hub_share": ("街道枢纽型组织覆盖率", "share of streets with a hub"),
    "towns_with_hub_share": ("乡镇枢纽型组织覆盖率", "share of towns and townships with a hub"),
    "townships_with_hub_share": ("街道和乡镇枢纽型组织覆盖率", "share of streets, towns and townships with a hub"),
    "streets_with_base_share": ("街道培育基地覆盖率", "share of streets covered by an incubation base"),
    "towns_with_base_share": ("乡镇培育基地覆盖率", "share of towns and townships covered by a base"),
    "party_covered_share": ("党的组织覆盖率", "share of organizations covered by party organizations"),
    "brand_organizations": ("品牌社区社会组织数", "brand organizations"),
    "brand_projects": ("品牌项目数", "brand projects"),
    "hub_demonstration_orgs": ("枢纽型示范组织数", "hub demonstration organizations"),
    "rated_3a_plus_share": ("3A以上等级社会组织占比", "share of registered organizations rated 3A or above"),
    "new_filings_functional": ("功能服务型组织年度新增备案数", "new functional filings in the year"),
    "new_filings_interest": ("兴趣爱好型和志愿服务型组织年度新增备案数",
                             "new interest & volunteer filings in the year"),
    "training_person_times": ("骨干人才培训人次（累计）", "core-talent training person-times"),
    "pool_trained_share": ("人才库成员轮训覆盖率", "share of pool members trained"),
    "exam_passes": ("社会工作职业资格考试通过人数", "social-work exam passes"),
}

FIELD_LABELS: dict[str, tuple[str, str]] = {
    "region": ("地区", "Region"),
    "target": ("目标", "Target"),
    "metric": ("指标", "Figure"),
    "change": ("变化", "Change"),
    "value": ("当前值", "Current value"),
    "threshold": ("目标值", "Threshold"),
    "deadline": ("截止日期", "Deadline"),
    "days_left": ("剩余天数", "Days left"),
    "plan": ("方案", "Plan"),
    "task": ("任务", "Task"),
    "lead_units": ("牵头单位", "Lead units"),
    "occurred_at": ("时间", "When"),
    "event_id": ("事件编号", "Event id"),
    "name": ("名称", "Name"),
    "category": ("类别", "Category"),
    "tier": ("管理类别", "Management tier"),
    "filing_number": ("备案号", "Filing number"),
    "filed_on": ("备案日期", "Filed on"),
    "social_credit_code": ("统一社会信用代码", "Social credit code"),
    "legal_form": ("组织形式", "Legal form"),
    "registered_on": ("登记日期", "Registered on"),
    "effective_on": ("生效日期", "Effective on"),
    "brand": ("品牌组织", "Brand"),
    "rating": ("评估等级", "Rating"),
    "kind": ("类型", "Kind"),
    "reason": ("原因", "Reason"),
    "ended_on": ("终止日期", "Ended on"),
    "established_on": ("成立日期", "Established on"),
    "dissolved_on": ("撤销日期", "Dissolved on"),
    "opened_on": ("启用日期", "Opened on"),
    "closed_on": ("关闭日期", "Closed on"),
    "covered_townships": ("覆盖乡镇（街道）数", "Townships covered"),
    "members": ("党员人数", "Party members"),
    "formed_on": ("成立日期", "Formed on"),
    "topic": ("主题", "Topic"),
    "starts_on": ("开始日期", "Starts on"),
    "ends_on": ("结束日期", "Ends on"),
    "capacity": ("名额", "Capacity"),
    "mode": ("方式", "Mode"),
    "completed_on": ("完成日期", "Completed on"),
    "role": ("角色", "Role"),
    "added_on": ("加入日期", "Added on"),
    "removed_on": ("移除日期", "Removed on"),
    "plan_id": ("方案", "Plan"),
    "task_no": ("任务编号", "Task"),
    "status": ("状态", "Status"),
    "lead_unit": ("牵头单位", "Lead unit"),
    "by": ("办理人", "By"),
    "note": ("备注", "Note"),
    "figures": ("指标", "Figures"),
}

VALUE_LABELS: dict[str, tuple[str, str]] = {
    "resident_services": ("为民服务类", "resident services"),
    "charity": ("公益慈善类", "charity"),
    "culture_sports": ("文体活动类", "culture & sports"),
    "mediation": ("专业调处类", "mediation"),
    "neighbourly_help": ("邻里互助类", "neighbourly help"),
    "rural_revitalization": ("乡村振兴类", "rural revitalization"),
    "filed": ("备案", "filed"),
    "guided": ("指导", "guided"),
    "registered": ("登记", "registered"),
    "social_group": ("社会团体", "social group"),
    "social_service_agency": ("社会服务机构", "social service agency"),
    "foundation": ("基金会", "foundation"),
    "deregistered": ("注销", "deregistered"),
    "revoked": ("撤销", "revoked"),
    "independent_branch": ("独立党支部", "independent branch"),
    "joint_branch": ("联合党支部", "joint branch"),
    "activity_branch": ("活动型党支部", "activity branch"),
    "liaison": ("党建联络员", "party liaison"),
    "on_site": ("线下", "on site"),
    "online": ("线上", "online"),
    "cso_leader": ("社区社会组织负责人", "CSO leader"),
    "social_worker": ("社区工作者", "social worker"),
    "volunteer": ("志愿者", "volunteer"),
    "hub_leader": ("枢纽型组织负责人", "hub leader"),
}

# Payload fields shown per event type, in order (others are left to the structured webhook body).
DETAILS: dict[str, tuple[str, ...]] = {
    "OrganizationFiled": ("name", "category", "tier", "filing_number", "filed_on"),
    "OrganizationRegistered": ("name", "legal_form", "category", "social_credit_code", "registered_on"),
    "OrganizationUpdated": ("name", "category", "brand", "rating", "effective_on"),
    "OrganizationDeregistered": ("kind", "reason", "ended_on"),
    "HubEstablished": ("name", "established_on"),
    "HubDissolved": ("reason", "dissolved_on"),
    "IncubationBaseOpened": ("name", "covered_townships", "opened_on"),
    "IncubationBaseClosed": ("closed_on",),
    "PartyOrganizationFormed": ("kind", "members", "formed_on"),
    "PartyOrganizationDissolved": ("dissolved_on",),
    "TrainingSessionScheduled": ("topic", "starts_on", "ends_on", "capacity", "mode"),
    "TrainingCompleted": ("completed_on",),
    "TalentPoolMemberAdded": ("role", "added_on"),
    "TalentPoolMemberRemoved": ("reason", "removed_on"),
    "TaskStatusChanged": ("plan_id", "task_no", "status", "by", "note"),
    "TaskOverdue": ("plan_id", "task_no", "lead_unit", "deadline"),
    "PlanAccepted": ("plan_id", "by"),
}

_LANG_INDEX: dict[str, int] = {"zh": 0, "en": 1}


def _pick(labels: Mapping[str, tuple[str, str]], key: str, language: Language) -> str:
    pair = labels.get(key)
    return pair[_LANG_INDEX[language]] if pair else key.replace("_", " ")


def region_path(code: str, names: Mapping[str, str]) -> str:
    """The region by its full path, province first (四川省 乐山市 市中区); a code stands in for an
    unknown name."""
    return " ".join(names.get(c, c) for c in ancestors(code))


def format_number(value: float | None, share: bool, language: Language) -> str:
    if value is None:
        return "暂无" if language == "zh" else "n/a"
    if share:
        text = f"{value * 100:.1f}".rstrip("0").rstrip(".")
        return text + "%"
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text or "0"


def _is_share(metric: str) -> bool:
    return metric.endswith("_share")


def _comparison(comparison: str) -> str:
    return {">=": "≥", "<=": "≤"}.get(comparison, comparison)


def _value_text(value: Any, language: Language) -> str:
    if isinstance(value, bool):
        return ("是" if value else "否") if language == "zh" else ("yes" if value else "no")
    if isinstance(value, list):
        return str(len(value))
    text = str(value)
    return _pick(VALUE_LABELS, text, language) if text in VALUE_LABELS else text


def _target_lines(notice: Notice, language: Language) -> tuple[str, list[tuple[str, str]]]:
    p = notice.payload
    metric = str(p.get("metric", ""))
    target = notice.target or TargetInfo(title=str(p.get("target_id", "")))
    share = _is_share(metric)
    value = p.get("value")
    threshold = float(p.get("threshold", 0.0))
    status = _pick(STATUS_LABELS, str(p.get("status")), language)
    previous = p.get("previous_status")
    before = _pick(STATUS_LABELS, str(previous), language) if previous else ("无" if language == "zh" else "none")
    value_text = format_number(float(value) if value is not None else None, share, language)
    threshold_text = f"{_comparison(target.comparison)} {format_number(threshold, share, language)}"
    deadline = str(p.get("deadline", ""))
    if language == "zh":
        headline = (f"{target.title}：{before} → {status}（当前 {value_text}，目标 {threshold_text}，"
                    f"截止 {deadline}）")
    else:
        headline = (f"{target.title}: {before} → {status} (now {value_text}, target {threshold_text}, "
                    f"due {deadline})")
    lines = [("target", target.title), ("metric", _pick(METRIC_LABELS, metric, language)),
             ("change", f"{before} → {status}"), ("value", value_text),
             ("threshold", threshold_text), ("deadline", deadline)]
    return headline, lines


def _reminder_lines(notice: Notice, language: Language) -> tuple[str, list[tuple[str, str]]]:
    p = notice.payload
    metric = str(p.get("metric", ""))
    share = _is_share(metric)
    days = int(p.get("days_left", 0))
    threshold = f"{_comparison(str(p.get('comparison', '>=')))} " \
                f"{format_number(float(p.get('threshold', 0.0)), share, language)}"
    title = str(p.get("title", p.get("target_id", "")))
    deadline = str(p.get("deadline", ""))
    if language == "zh":
        headline = f"距截止日期 {deadline} 还有 {days} 天：{title}（目标 {threshold}）"
    else:
        headline = f"{days} days to the {deadline} deadline: {title} (target {threshold})"
    lines = [("target", title), ("metric", _pick(METRIC_LABELS, metric, language)),
             ("threshold", threshold), ("deadline", deadline), ("days_left", str(days))]
    return headline, lines


def _task_reminder_lines(notice: Notice, language: Language) -> tuple[str, list[tuple[str, str]]]:
    p = notice.payload
    days = int(p.get("days_left", 0))
    deadline = str(p.get("deadline", ""))
    task = f"{p.get('task_no', '')} {p.get('title', '')}".strip()
    units = "、".join(str(u) for u in p.get("lead_units") or []) if language == "zh" else \
        ", ".join(str(u) for u in p.get("lead_units") or [])
    plan = str(p.get("plan_title") or p.get("plan_id", ""))
    if language == "zh":
        headline = f"距截止日期 {deadline} 还有 {days} 天：{plan} 任务 {task}（牵头单位：{units}）"
    else:
        headline = f"{days} days to the {deadline} deadline: {plan}, task {task} (lead units: {units})"
    lines = [("plan", plan), ("task", task), ("lead_units", units),
             ("status", _value_text(p.get("status", ""), language)), ("deadline", deadline),
             ("days_left", str(days))]
    return headline, lines


def _coverage_lines(notice: Notice, language: Language) -> tuple[str, list[tuple[str, str]]]:
    figures = notice.payload.get("figures") or {}
    shown = [(str(k), v) for k, v in sorted(figures.items()) if k in METRIC_LABELS][:12]
    lines = [("metric", f"{_pick(METRIC_LABELS, k, language)} = "
                        f"{format_number(float(v) if v is not None else None, _is_share(k), language)}")
             for k, v in shown]
    headline = _pick(KIND_LABELS, notice.kind, language)
    return headline, lines


def _event_lines(notice: Notice, language: Language) -> tuple[str, list[tuple[str, str]]]:
    p = notice.payload
    fields = DETAILS.get(notice.kind, tuple(k for k, v in p.items()
                                            if isinstance(v, str | int | float | bool) and not k.endswith("_id")))
    lines = [(f, _value_text(p[f], language)) for f in fields if p.get(f) is not None]
    label = _pick(KIND_LABELS, notice.kind, language)
    name = p.get("name") or p.get("topic")
    if name:
        headline = f"{label}：{name}" if language == "zh" else f"{label}: {name}"
    else:
        headline = label
    return headline, lines


def render(notice: Notice, names: Mapping[str, str], language: Language,
           tz: str = DEFAULT_TIMEZONE) -> Message:
    """The message for one notice in the subscriber's language: a subject naming the region's full
    path and what changed, and a text with the details (figure, threshold, deadline…)."""
    if notice.kind == "TargetStatusChanged":
        headline, lines = _target_lines(notice, language)
        tail = headline
    elif notice.kind == REMINDER:
        headline, lines = _reminder_lines(notice, language)
        tail = headline
    elif notice.kind == TASK_REMINDER:
        headline, lines = _task_reminder_lines(notice, language)
        tail = headline
    elif notice.kind == "CoverageChanged":
        headline, lines = _coverage_lines(notice, language)
        tail = ""
    else:
        headline, lines = _event_lines(notice, language)
        tail = str(notice.payload.get("name") or notice.payload.get("topic") or "")
    path = region_path(notice.region, names)
    label = _pick(KIND_LABELS, notice.kind, language)
    when = notice.occurred_at.astimezone(ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")
    sep = "：" if language == "zh" else ": "
    if language == "zh":
        subject = f"【{label}】{path}" + (f" {tail}" if tail else "")
    else:
        subject = f"[{label}] {path}" + (f": {tail}" if tail else "")
    body = [headline, "", f"{_pick(FIELD_LABELS, 'region', language)}{sep}{path}"]
    body += [f"{_pick(FIELD_LABELS, key, language)}{sep}{value}" for key, value in lines]
    body += [f"{_pick(FIELD_LABELS, 'occurred_at', language)}{sep}{when} ({tz})",
             f"{_pick(FIELD_LABELS, 'event_id', language)}{sep}{notice.event_id}"]
    return Message(subject=subject, text="\n".join(body) + "\n", headline=f"{path} {headline}")


def render_digest(day: date, region: str, names: Mapping[str, str], lines: Sequence[DigestLine],
                  language: Language, tz: str = DEFAULT_TIMEZONE) -> Message:
    """One message with the day's changes, oldest first."""
    path = region_path(region, names)
    label = _pick(KIND_LABELS, DIGEST, language)
    ordered = sorted(lines, key=lambda line: line.at)
    zone = ZoneInfo(tz)
    if language == "zh":
        headline = f"{day.isoformat()} 共 {len(ordered)} 项变化"
        subject = f"【{label}】{path} {headline}"
    else:
        headline = f"{day.isoformat()}: {len(ordered)} change{'s' if len(ordered) != 1 else ''}"
        subject = f"[{label}] {path}: {headline}"
    body = [headline, ""] + [f"{i}. {line.at.astimezone(zone).strftime('%H:%M')} {line.headline}"
                             for i, line in enumerate(ordered, 1)]
    return Message(subject=subject, text="\n".join(body) + "\n", headline=f"{path} {headline}")
