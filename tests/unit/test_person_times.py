"""Person-times count every trainee; the pool-only counter counts pool members' completions, and
a completion published before contracts 1.2.0 (no pool_member) as a pool member's (issue 21)."""

from __future__ import annotations

import uuid
from datetime import date, datetime, timezone

from contracts import events as ev
from services.targets.domain import coverage as cov
from services.targets.domain import entities as ent

COUNTY, SESSION = "511102", uuid.uuid4()


def completion(person: uuid.UUID, pool_member: bool | None) -> ent.Fact:
    payload = ev.TrainingCompleted(session_id=SESSION, person_id=person, organizer_region=COUNTY,
                                   county_code=COUNTY, completed_on=date(2025, 3, 1), pool_member=pool_member,
                                   trainee_role=None if pool_member is None else
                                   "cso_leader" if pool_member else "community_worker")
    return ent.Fact(datetime(2025, 3, 1, tzinfo=timezone.utc), uuid.uuid4(), payload)


def counted(facts: list[ent.Fact], counter: str) -> int:
    contribution = cov.contribution(ent.person_timeline(facts))
    return sum(v for (region, name, _), v in contribution.items() if region == COUNTY and name == counter)


def test_a_trainee_outside_the_pools_counts_in_person_times_only() -> None:
    worker = [completion(uuid.uuid4(), pool_member=False)]
    assert counted(worker, "training_person_times") == 1
    assert counted(worker, "pool_training_person_times") == 0
    member = uuid.uuid4()
    joined = ent.Fact(datetime(2025, 1, 1, tzinfo=timezone.utc), uuid.uuid4(), ev.TalentPoolMemberAdded(
        person_id=member, county_code=COUNTY, role="cso_leader", added_on=date(2025, 1, 1)))
    pooled = [joined, completion(member, pool_member=True)]
    assert counted(pooled, "training_person_times") == counted(pooled, "pool_training_person_times") == 1
    before = [joined, completion(member, pool_member=None)]    # published before 1.2.0
    assert counted(before, "pool_training_person_times") == 1


def test_a_timeline_kept_before_the_pool_counter_reads_as_pool_member_s() -> None:
    old = cov.Timeline("person", (), ((date(2025, 3, 1), (COUNTY,)),))
    counters = {name for (_, name, _) in cov.contribution(old)}
    assert counters == {"training_person_times", "pool_training_person_times"}
