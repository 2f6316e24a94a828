"""Reading JSON from outside strictly, before any model sees it.

Python's json module accepts things no contract means and some that break what comes after:
nesting deep enough to raise RecursionError, integers of thousands of digits (ValueError, not a
JSON error), NaN and Infinity, duplicate keys (the last one silently wins, while another parser
may take the first), and text that PostgreSQL refuses (NUL) or that cannot be encoded at all
(lone surrogates from "\\ud800"). Every refusal here names where it is, as `TextError`.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 32
MAX_NUMBER_DIGITS = 40
# C0 controls but tab, newline and carriage return; DEL and C1 controls; UTF-16 surrogates.
BAD_TEXT = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]")


class TextError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        self.field, self.message = field, message
        super().__init__(f"{field}: {message}")


def text_problem(value: str) -> str | None:
    """Why `value` cannot be stored as text, or None."""
    bad = BAD_TEXT.search(value)
    if bad is None:
        return None
    char = bad.group()
    if "\ud800" <= char <= "\udfff":
        return f"contains a lone surrogate U+{ord(char):04X} (not valid Unicode)"
    return f"contains the control character U+{ord(char):04X} at position {bad.start()}"


class _Refused:
    """Stands in for a value json.loads cannot be trusted with, so that `check` names its field."""

    def __init__(self, message: str) -> None:
        self.message = message


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if problem := text_problem(key):
            raise TextError("$", f"a key {problem}")
        out[key] = _Refused("duplicate key") if key in out else value
    return out


def _constant(name: str) -> Any:
    return _Refused(f"{name} is not a JSON number")


def _float(text: str) -> Any:
    if len(text) > 2 * MAX_NUMBER_DIGITS:
        return _Refused(f"a number of {len(text)} characters is too long")
    value = float(text)
    return value if math.isfinite(value) else _Refused(f"{text[:20]} is out of range")


def _int(text: str) -> Any:
    if len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        return _Refused(f"an integer of {len(text)} digits is too long")
    return int(text)


# What only a walk through the parsed value can place: an escaped control character or surrogate,
# a raw DEL or C1 control character. (A raw C0 control character is not JSON at all.)
SUSPECT = re.compile(r"\\(?:[bf]|u(?:00[01][0-9a-fA-F]|007[fF]|00[89][0-9a-fA-F]|[dD][89a-fA-F][0-9a-fA-F]{2}))"
                     "|[\x7f-\x9f]")
SUSPECT_BYTES = re.compile(rb"\\(?:[bf]|u(?:00[01][0-9a-fA-F]|007[fF]|00[89][0-9a-fA-F]|[dD][89a-fA-F][0-9a-fA-F]{2}))"
                           rb"|\x7f|\xc2[\x80-\x9f]")


class _Flagged(Exception):
    """Something the strict reading refuses: parse again, slowly, to name where it is."""


def _pairs_fast(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise _Flagged
    return out


def _flag(_: str) -> Any:
    raise _Flagged


def _float_fast(text: str) -> float:
    value = float(text)
    if len(text) > 2 * MAX_NUMBER_DIGITS or not math.isfinite(value):
        raise _Flagged
    return value


def _int_fast(text: str) -> int:
    if len(text) > MAX_NUMBER_DIGITS and len(text.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise _Flagged
    return int(text)


def _decode(raw: bytes | str) -> str:
    try:
        return raw.decode("utf-8") if isinstance(raw, bytes | bytearray) else raw
    except UnicodeDecodeError as e:
        raise TextError("$", f"not JSON: not UTF-8 ({e.reason} at byte {e.start})") from None


# Built once: json.loads with any hook builds a new decoder per call (measurable per event).
_FAST_STRICT = json.JSONDecoder(object_pairs_hook=_pairs_fast, parse_constant=_flag,
                                parse_float=_float_fast, parse_int=_int_fast)


def reads_strictly(raw: bytes) -> bool:
    """Whether `loads` takes the numbers and keys of this text as they are (no key given twice, no
    number it refuses), in one parse without a walk; False for text that is no JSON. What the text's
    strings contain is `SUSPECT`'s and `check`'s to say."""
    try:
        _FAST_STRICT.decode(raw.decode("utf-8"))
    except (_Flagged, ValueError, RecursionError):
        return False
    return True


def suspect_bytes(raw: bytes) -> bool:
    """`SUSPECT_BYTES.search(raw)`, the usual text answered by three byte searches (a fifth of the
    regular expression's time): every suspect sequence starts with a backslash, DEL or 0xC2."""
    if b"\\" not in raw and b"\x7f" not in raw and b"\xc2" not in raw:
        return False
    return SUSPECT_BYTES.search(raw) is not None


def loads(raw: bytes | str) -> Any:
    """Parse JSON strictly, then `check` it; TextError naming the field on any refusal. The usual
    valid text costs one json.loads and a regular expression; only suspect text is walked."""
    text = _decode(raw)
    try:
        try:
            data = _FAST_STRICT.decode(text)
        except _Flagged:
            # Parsed again to name the field: the text may still be no JSON further on.
            data = json.loads(text, object_pairs_hook=_pairs, parse_constant=_constant,
                              parse_float=_float, parse_int=_int)
            check(data)
            raise TextError("$", "refused") from None  # (check names it; not reached)
    except TextError:
        raise
    except RecursionError:
        raise TextError("$", "not JSON this service takes: nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError is one
        raise TextError("$", f"not JSON: {e}") from None
    if SUSPECT.search(text) or text.count("[") + text.count("{") > MAX_DEPTH:
        check(data)
    return data


def check(data: Any, max_depth: int = MAX_DEPTH) -> None:
    """Refuse nesting deeper than `max_depth`, and keys or strings that are not storable text."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        value, path, depth = stack.pop()
        if isinstance(value, str):
            problem = text_problem(value)
            if problem:
                raise TextError(path or "$", problem)
        elif isinstance(value, _Refused):
            raise TextError(path or "$", value.message)
        elif isinstance(value, dict | list):
            if depth >= max_depth:
                raise TextError(path or "$", f"nested deeper than {max_depth} levels")
            items = value.items() if isinstance(value, dict) else enumerate(value)
            for key, item in items:
                if isinstance(key, str) and (problem := text_problem(key)):
                    raise TextError(path or "$", f"a key {problem}")
                stack.append((item, f"{path}.{key}" if path else str(key), depth + 1))
