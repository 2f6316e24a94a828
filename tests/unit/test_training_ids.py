"""GB 11643-1999 resident ID numbers: the check character, birth dates, and what is kept of them."""

from __future__ import annotations

from datetime import date, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.training import domain

TODAY = date(2024, 6, 1)


def complete(first17: str) -> str:
    return first17 + domain.id_check_character(first17)


births = st.dates(min_value=date(1900, 1, 1), max_value=TODAY).map(lambda d: d.strftime("%Y%m%d"))
regions = st.from_regex(r"[1-8][0-9]{5}", fullmatch=True)
serials = st.from_regex(r"[0-9]{3}", fullmatch=True)


@pytest.mark.parametrize("number", [
    "11010519491231002X",   # the example of GB 11643-1999
    "510681199001011230",
])
def test_standard_examples_pass(number: str) -> None:
    assert domain.validate_id_number(number, TODAY) == number
    assert domain.validate_id_number(number.lower(), TODAY) == number


def test_weights_and_characters_are_the_standard_ones() -> None:
    # W_i = 2^(i-1) mod 11, i counting from the right (the check character is i = 1); the check
    # character is (12 - S mod 11) mod 11, with 10 written X.
    assert domain.ID_WEIGHTS == tuple(pow(2, 18 - p, 11) for p in range(1, 18))
    assert domain.ID_CHECK_CHARACTERS == "".join(
        "X" if (12 - r) % 11 == 10 else str((12 - r) % 11) for r in range(11))


@given(regions, births, serials, st.integers(0, 16), st.integers(1, 9))
def test_any_single_digit_change_is_caught(region: str, birth: str, serial: str, position: int,
                                           shift: int) -> None:
    good = complete(region + birth + serial)
    assert domain.validate_id_number(good, TODAY) == good
    digit = (int(good[position]) + shift) % 10
    bad = good[:position] + str(digit) + good[position + 1:]
    # The checksum alone catches it (every weight is non-zero mod the prime 11)...
    assert domain.id_check_character(bad[:17]) != bad[17]
    # ...and validation refuses it, as a bad check character or a bad birth date / region.
    with pytest.raises(domain.BadIdNumber):
        domain.validate_id_number(bad, TODAY)


@given(regions, births, serials, st.sampled_from("0123456789X"))
def test_a_wrong_check_character_is_caught(region: str, birth: str, serial: str, check: str) -> None:
    good = complete(region + birth + serial)
    if check != good[17]:
        with pytest.raises(domain.BadIdNumber, match="check character") as e:
            domain.validate_id_number(good[:17] + check, TODAY)
        assert e.value.checksum


@given(regions, births, serials, st.integers(0, 15))
def test_adjacent_transpositions_are_caught(region: str, birth: str, serial: str, i: int) -> None:
    good = complete(region + birth + serial)
    swapped = good[:i] + good[i + 1] + good[i] + good[i + 2:]
    if swapped != good:
        assert domain.id_check_character(swapped[:17]) != swapped[17]


@pytest.mark.parametrize(("number", "message"), [
    ("51068119850312123", "18 characters"),
    ("5106811985031212345", "18 characters"),
    ("51068119850312123A", "17 digits and a final digit or X"),
    ("5106811985O3121234", "17 digits"),
    (complete("51068119850230123"), "birth date"),      # 30 February
    (complete("51068118991231123"), "before 1900"),
    (complete("510681" + (TODAY + timedelta(days=1)).strftime("%Y%m%d") + "123"), "in the future"),
    (complete("01068119850312123"), "division code"),
    ("5.10681E+17", "format the column as text"),
])
def test_malformed_numbers_say_why(number: str, message: str) -> None:
    with pytest.raises(domain.BadIdNumber, match=message) as e:
        domain.validate_id_number(number, TODAY)
    assert not e.value.checksum
    assert number not in str(e.value) and number[6:14] not in str(e.value)


def test_spreadsheet_spellings_are_normalized() -> None:
    number = "11010519491231002X"
    for written in ("'11010519491231002x", " 110105 19491231 002X ", "１１０１０５１９４９１２３１００２Ｘ"):
        assert domain.validate_id_number(written, TODAY) == number


def test_only_a_keyed_hash_and_a_masked_form_are_kept() -> None:
    number = "11010519491231002X"
    assert domain.mask_id(number) == "1101**********002X"
    a, b = domain.id_hash(b"key-a", number), domain.id_hash(b"key-b", number)
    assert a != b and len(a) == 64 and number not in a
    assert domain.id_hash(b"key-a", number) == a
    assert domain.mask_phone("13808380123") == "138****0123"
    assert domain.mask_name("张丽华") == "张**" and domain.mask_name("王") == "王*"


@pytest.mark.parametrize(("raw", "phone"), [
    ("138 0838 0123", "13808380123"), ("+86-138-0838-0123", "13808380123"),
    ("0838-5221234", "08385221234"), ("'13808380123", "13808380123"),
])
def test_phones_are_normalized(raw: str, phone: str) -> None:
    assert domain.normalize_phone(raw) == phone


@pytest.mark.parametrize("raw", ["12345", "abc", "12008380123", "1380838012312345678"])
def test_bad_phones_are_refused(raw: str) -> None:
    with pytest.raises(ValueError):
        domain.normalize_phone(raw)
