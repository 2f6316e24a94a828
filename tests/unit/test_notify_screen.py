"""notify's screen (services/notify/domain.Screen) decides on the subject alone, before the body
is parsed, whether any subscription can match: it must never skip an event that one matches."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from contracts import PAYLOAD_BY_TYPE, Topology
from services.notify.domain import SUBSCRIBABLE, Screen, region_matches

TOPOLOGY = Topology("ns1")
SCREENED = sorted(t for t in SUBSCRIBABLE
                  if t in PAYLOAD_BY_TYPE and PAYLOAD_BY_TYPE[t].CONTEXT in ("registry", "training"))
LENGTHS = (2, 4, 6, 9, 12)


def region(digits: str, length: int) -> str:
    return digits[:length]


codes = st.builds(lambda a, b, c: a + b + c, st.sampled_from(["51", "52"]), st.sampled_from(["11", "13"]),
                  st.sampled_from(["02001001001", "02001002001", "11101001001", "02002001001"]))
rules = st.lists(st.tuples(st.sampled_from(SCREENED), codes, st.sampled_from(LENGTHS), st.booleans()), max_size=4)


@given(rules, st.sampled_from(SCREENED), codes, st.sampled_from(LENGTHS))
def test_never_skips_an_event_a_subscription_matches(subs: list[tuple[str, str, int, bool]], kind: str,
                                                     event_code: str, event_length: int) -> None:
    screen = Screen((k, region(c, n), include) for k, c, n, include in subs)
    event_region = region(event_code, event_length)
    subject = TOPOLOGY.event_subject(kind, event_region)
    matched = any(k == kind and region_matches(region(c, n), include, event_region) for k, c, n, include in subs)
    if matched:
        assert screen(subject), (subject, subs)


def test_skips_what_no_subscription_can_match() -> None:
    screen = Screen([("HubEstablished", "5111", True), ("OrganizationFiled", "511102001", False)])
    assert screen(TOPOLOGY.event_subject("HubEstablished", "511102001001"))
    assert not screen(TOPOLOGY.event_subject("HubEstablished", "511302"))                 # another city
    assert not screen(TOPOLOGY.event_subject("PartyOrganizationFormed", "511102001001"))  # nobody asked
    assert screen(TOPOLOGY.event_subject("OrganizationFiled", "511102001002"))            # below its county
    assert not screen(TOPOLOGY.event_subject("OrganizationFiled", "511103001001"))        # another county
    assert not screen(TOPOLOGY.event_subject("OrganizationFiled", "5111"))                # above, not included
    # targets' events also feed deadlines, the divisions' the names: always parsed.
    assert Screen([])(TOPOLOGY.event_subject("TargetStatusChanged", "5111"))
    assert not Screen([])(TOPOLOGY.event_subject("OrganizationFiled", "5111"))
