"""The correctness oracle: every counter recounted from scratch in SQL over registry's own tables
(what is on record today), for comparison with targets' incrementally maintained coverage; and
what that recount says is behind a target, unit by unit."""

from __future__ import annotations

from collections import Counter

import asyncpg

from contracts import events as ev

FUNCTIONAL = ("resident_services", "mediation", "rural_revitalization")

# Each query yields (region code, counter, value) for one tier's code length.
# A township or community retired by a division change (merged, recoded, abolished: registry moved
# what was there to its successor) is no division of today: it stays in registry's tables for
# filings of its past days, and is left out here.
_RETIRED = ("SELECT code FROM registry.division_change WHERE change <> 'renamed' "
            "AND effective_on <= current_date")
_ORGS = """
SELECT left(o.community_code, {n}) AS region, x.counter, count(*) FROM registry.organization o
LEFT JOIN registry.community c ON c.code = o.community_code
CROSS JOIN LATERAL (VALUES ('orgs'), ('orgs_' || o.tier), ('orgs_cat_' || o.category),
    (CASE WHEN o.category IN ('resident_services', 'mediation', 'rural_revitalization')
          THEN 'orgs_functional' ELSE 'orgs_interest' END),
    (CASE WHEN c.kind IN ('urban', 'rural') THEN 'orgs_' || c.kind END),
    (CASE WHEN c.kind IN ('urban', 'rural') THEN 'orgs_' || c.kind || '_' || o.tier
          ELSE 'orgs_other_' || o.tier END),
    (CASE WHEN EXISTS (SELECT 1 FROM registry.party_coverage pc JOIN registry.party_organization p
                       ON p.id = pc.party_organization_id
                       WHERE pc.organization_id = o.id AND p.ended_on IS NULL)
          THEN 'orgs_party_covered' END),
    (CASE WHEN o.brand THEN 'brand_orgs' END),
    (CASE WHEN o.hub_demonstration THEN 'hub_demo_orgs' END),
    (CASE WHEN o.tier = 'registered' AND o.rating IS NOT NULL THEN 'orgs_rated' END),
    (CASE WHEN o.tier = 'registered' AND o.rating IN ('3A', '4A', '5A') THEN 'orgs_rated_3a_plus' END)) AS x(counter)
WHERE o.status = 'active' AND x.counter IS NOT NULL GROUP BY 1, 2
UNION ALL
SELECT left(community_code, {n}), 'brand_projects', sum(brand_projects) FROM registry.organization
WHERE status = 'active' GROUP BY 1
UNION ALL
SELECT left(code, {n}), 'communities_' || kind, count(*) FROM registry.community
WHERE kind IN ('urban', 'rural') AND code NOT IN ({retired}) GROUP BY 1, 2
UNION ALL
SELECT left(code, {n}), CASE kind WHEN 'street' THEN 'streets' ELSE 'towns' END, count(*)
FROM registry.township WHERE kind IN ('street', 'town', 'township') AND length(code) >= {n}
AND code NOT IN ({retired}) GROUP BY 1, 2
UNION ALL
SELECT left(t.code, {n}), CASE t.kind WHEN 'street' THEN 'streets_with_hub' ELSE 'towns_with_hub' END, count(*)
FROM registry.township t WHERE t.kind IN ('street', 'town', 'township') AND length(t.code) >= {n}
AND t.code NOT IN ({retired})
AND EXISTS (SELECT 1 FROM registry.hub h WHERE h.region_code = t.code AND h.ended_on IS NULL) GROUP BY 1, 2
UNION ALL
SELECT left(t.code, {n}), CASE t.kind WHEN 'street' THEN 'streets_with_base' ELSE 'towns_with_base' END, count(*)
FROM registry.township t WHERE t.kind IN ('street', 'town', 'township') AND length(t.code) >= {n}
AND t.code NOT IN ({retired})
AND EXISTS (SELECT 1 FROM registry.base_township bt JOIN registry.incubation_base b ON b.id = bt.base_id
            WHERE bt.township_code = t.code AND b.ended_on IS NULL) GROUP BY 1, 2
UNION ALL
SELECT left(region_code, {n}), 'hubs', count(*) FROM registry.hub
WHERE ended_on IS NULL AND length(region_code) >= {n} GROUP BY 1
UNION ALL
SELECT left(region_code, {n}), 'bases', count(*) FROM registry.incubation_base
WHERE ended_on IS NULL AND length(region_code) >= {n} GROUP BY 1
UNION ALL
SELECT left(region_code, {n}), x.counter, count(*) FROM registry.facility
CROSS JOIN LATERAL (VALUES (kind || 's'), (kind || 's_' || CASE length(region_code) WHEN 4 THEN 'city'
    WHEN 6 THEN 'county' WHEN 9 THEN 'township' ELSE 'community' END)) AS x(counter)
WHERE ended_on IS NULL AND length(region_code) >= {n} GROUP BY 1, 2
UNION ALL
SELECT left(f.region_code, {n}), CASE length(f.region_code) WHEN 4 THEN 'cities' WHEN 6 THEN 'counties'
    WHEN 9 THEN 'townships' ELSE 'communities' END || '_with_' || f.kind, count(DISTINCT f.region_code)
FROM registry.facility f LEFT JOIN registry.township t ON t.code = f.region_code
LEFT JOIN registry.community c ON c.code = f.region_code
WHERE f.ended_on IS NULL AND length(f.region_code) >= {n}
AND (length(f.region_code) < 9 OR t.kind IN ('street', 'town', 'township') OR c.kind IN ('urban', 'rural'))
GROUP BY 1, 2
UNION ALL
SELECT left(region, {n}), 'filings_' || CASE WHEN payload->'payload'->>'category' IN
    ('resident_services', 'mediation', 'rural_revitalization') THEN 'functional' ELSE 'interest' END, count(*)
FROM (SELECT convert_from(data, 'UTF8')::jsonb AS payload, convert_from(data, 'UTF8')::jsonb->>'region' AS region
      FROM registry.outbox WHERE type = 'OrganizationFiled') f
WHERE payload->'payload'->>'tier' = 'filed' AND length(region) >= {n} GROUP BY 1, 2
UNION ALL
SELECT left(region, {n}), 'registrations_' || CASE WHEN payload->'payload'->>'category' IN
    ('resident_services', 'mediation', 'rural_revitalization') THEN 'functional' ELSE 'interest' END, count(*)
FROM (SELECT DISTINCT ON (e->'payload'->>'organization_id') e AS payload, e->>'region' AS region
      FROM (SELECT convert_from(data, 'UTF8')::jsonb AS e FROM registry.outbox
            WHERE type = 'OrganizationRegistered') o
      ORDER BY e->'payload'->>'organization_id', e->'payload'->>'registered_on') f
WHERE length(region) >= {n} GROUP BY 1, 2
"""


async def recount(dsn: str) -> Counter[tuple[str, str]]:
    """(region, counter) -> value at province, city, county, township and community tier (a
    township's own counters, streets to bases, do not repeat at the community)."""
    db = await asyncpg.connect(dsn)
    try:
        out: Counter[tuple[str, str]] = Counter()
        for n in (2, 4, 6, 9, 12):
            for region, counter, value in await db.fetch(_ORGS.format(n=n, retired=_RETIRED)):
                if value:
                    out[(region, counter)] += int(value)
        return out
    finally:
        await db.close()


async def projected(dsn: str, counters: set[str] | None = None) -> Counter[tuple[str, str]]:
    db = await asyncpg.connect(dsn)
    try:
        rows = await db.fetch("SELECT region, counter, value FROM targets.coverage_now WHERE value <> 0")
        return Counter({(r, c): int(v) for r, c, v in rows if counters is None or c in counters})
    finally:
        await db.close()


def short_of(threshold: float, comparison: str, numerator: int, denominator: int) -> int:
    """How many more (fewer, for "<=") of the numerator a unit needs to meet the threshold,
    counted up one by one: the oracle's own arithmetic, not targets'."""
    k = 0
    if comparison == ">=":
        while (numerator + k) / denominator < threshold:
            k += 1
    else:
        while numerator - k > 0 and (numerator - k) / denominator > threshold:
            k += 1
    return k


def behind(counts: Counter[tuple[str, str]], under: str, length: int, numerator: tuple[str, ...],
           denominator: tuple[str, ...], threshold: float, comparison: str) -> tuple[int, dict[str, int]]:
    """From a recount: (how many divisions of `length` digits under `under` the figure applies to,
    {code: shortfall} of those under the threshold)."""
    codes = {r for r, _ in counts if len(r) == length and r.startswith(under)}
    counted, out = 0, {}
    for code in codes:
        bottom = sum(counts.get((code, c), 0) for c in denominator)
        if bottom <= 0:
            continue
        counted += 1
        short = short_of(threshold, comparison, sum(counts.get((code, c), 0) for c in numerator), bottom)
        if short:
            out[code] = short
    return counted, out


REGISTRY_COUNTERS = {"orgs", "orgs_registered", "orgs_filed", "orgs_guided", "orgs_functional",
                     "orgs_interest", "orgs_urban", "orgs_rural", "communities_urban",
                     "communities_rural", "streets", "towns", "streets_with_hub", "towns_with_hub",
                     "streets_with_base", "towns_with_base", "hubs", "bases", "orgs_party_covered",
                     "brand_orgs", "brand_projects", "hub_demo_orgs", "orgs_rated", "orgs_rated_3a_plus",
                     "filings_functional",
                     "filings_interest", "registrations_functional", "registrations_interest",
                     *(f"orgs_{k}_{t.value}" for k in ("urban", "rural", "other") for t in ev.ManagementTier),
                     } | {f"orgs_cat_{c.value}" for c in ev.Category}
# Facilities (FacilityOpened): each kind running, by the tier it opened at, and the divisions with one.
_PLURAL = {"city": "cities", "county": "counties", "township": "townships", "community": "communities"}
FACILITY_COUNTERS = {f"{k.value}s" for k in ev.FacilityKind} | {
    name for k, tiers in ev.FACILITY_TIERS.items() for t in tiers
    for name in (f"{k.value}s_{t}", f"{_PLURAL[t]}_with_{k.value}")}
REGISTRY_COUNTERS |= FACILITY_COUNTERS
