"""Division codes and unified social credit codes: the identifiers every event carries."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, StringConstraints, WithJsonSchema

Tier = Literal["province", "city", "county", "township", "community"]

TIER_BY_LENGTH: dict[int, Tier] = {
    2: "province",
    4: "city",
    6: "county",
    9: "township",
    12: "community",
}
TIER_LENGTH: dict[Tier, int] = {tier: length for length, tier in TIER_BY_LENGTH.items()}
TIERS: tuple[Tier, ...] = ("province", "city", "county", "township", "community")


def is_digits(code: str) -> bool:
    """ASCII digits only: str.isdigit() also takes "５" (fullwidth), "٥" (Arabic-Indic) and "²"."""
    return code.isascii() and code.isdigit()


def tier_of(code: str) -> Tier:
    """The tier a statistical division code belongs to, from its length."""
    if not is_digits(code) or len(code) not in TIER_BY_LENGTH:
        raise ValueError(
            f"{code!r} is not a division code: expected 2, 4, 6, 9 or 12 digits"
        )
    return TIER_BY_LENGTH[len(code)]


def ancestors(code: str) -> list[str]:
    """The code itself and every ancestor, province first (a child's code starts with its parent's)."""
    tier_of(code)
    return [code[:n] for n in (2, 4, 6, 9, 12) if n <= len(code)]


def _division(code: str) -> str:
    tier_of(code)
    return code


def _of_length(length: int) -> AfterValidator:
    def check(code: str) -> str:
        if len(code) != length or not is_digits(code):
            raise ValueError(f"expected a {TIER_BY_LENGTH[length]} code of {length} digits")
        return code

    return AfterValidator(check)


# What the published JSON Schemas say of each code: `[0-9]`, not `\d`, which some regular
# expression engines (Python's among them) let match fullwidth and other non-ASCII digits.
REGION_PATTERN = "^([0-9]{2}|[0-9]{4}|[0-9]{6}|[0-9]{9}|[0-9]{12})$"


def _code_schema(length: int) -> WithJsonSchema:
    tier = TIER_BY_LENGTH[length]
    return WithJsonSchema({"type": "string", "pattern": f"^[0-9]{{{length}}}$",
                           "description": f"a {tier} division code: {length} ASCII digits"})


RegionCode = Annotated[str, StringConstraints(pattern=r"^[0-9]+$", max_length=12), AfterValidator(_division),
                       WithJsonSchema({"type": "string", "pattern": REGION_PATTERN,
                                       "description": "a division code of any tier: 2, 4, 6, 9 or 12 ASCII "
                                                      "digits (province, city, county, township, community)"})]
CommunityCode = Annotated[str, _of_length(12), _code_schema(12)]
TownshipCode = Annotated[str, _of_length(9), _code_schema(9)]
CountyCode = Annotated[str, _of_length(6), _code_schema(6)]
CityCode = Annotated[str, _of_length(4), _code_schema(4)]

# GB 32100-2015: 31 symbols, no I, O, S, V, Z.
USCC_ALPHABET = "0123456789ABCDEFGHJKLMNPQRTUWXY"
_USCC_VALUE = {ch: i for i, ch in enumerate(USCC_ALPHABET)}
_USCC_WEIGHTS = [pow(3, i, 31) for i in range(17)]


def uscc_check_character(first17: str) -> str:
    """The 18th character of a unified social credit code, from the first 17."""
    total = sum(_USCC_VALUE[ch] * w for ch, w in zip(first17, _USCC_WEIGHTS, strict=True))
    return USCC_ALPHABET[(31 - total % 31) % 31]


def validate_uscc(code: str) -> str:
    """Reject a unified social credit code that is malformed or fails its check character."""
    code = code.strip().upper()
    if len(code) != 18:
        raise ValueError(f"a unified social credit code has 18 characters, got {len(code)}")
    bad = sorted({ch for ch in code if ch not in _USCC_VALUE})
    if bad:
        raise ValueError(f"characters {''.join(bad)!r} are not allowed in a unified social credit code")
    if not is_digits(code[2:8]):
        raise ValueError("positions 3-8 of a unified social credit code must be a division code")
    expected = uscc_check_character(code[:17])
    if code[17] != expected:
        raise ValueError(
            f"check character is {code[17]!r} but GB 32100-2015 gives {expected!r}"
        )
    return code


# validate_uscc takes the code in any case and with spaces around it (it strips and upper-cases).
USCC_CHARACTER = "0-9A-HJ-NP-RTUW-Ya-hj-np-rtuw-y"
USCC_PATTERN = rf"^\s*[{USCC_CHARACTER}]{{2}}[0-9]{{6}}[{USCC_CHARACTER}]{{10}}\s*$"
SocialCreditCode = Annotated[str, AfterValidator(validate_uscc), WithJsonSchema({
    "type": "string", "pattern": USCC_PATTERN,
    "description": "a unified social credit code (GB 32100-2015): 18 characters of 0-9 and A-Z without "
                   "I, O, S, V, Z, positions 3-8 a division code. Not expressible in JSON Schema, and "
                   "checked by cso (refused naming this field): the 18th character is the check "
                   "character of the first 17."})]
