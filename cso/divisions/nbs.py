"""Reading the NBS statistical division code files (统计用区划代码), one tier per file.

A directory holds provinces, cities, areas (counties), streets (townships) and villages
(communities), each as `<stem>.csv.gz` or `<stem>.csv`. Rows are streamed: the villages file has
620k rows, and an import of a few cities should not hold the country's in memory.
"""

from __future__ import annotations

import csv
import gzip
import io
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, TextIO

from contracts.codes import TIER_LENGTH, Tier

# The longest name in the 2023 edition has 33 characters; the contracts allow 200.
MAX_NAME_LENGTH = 200


@dataclass(frozen=True, slots=True)
class Level:
    """One file of the edition: its stem, its tier and its columns in file order.

    `parents` maps each parent column to the tier it names; the first is the direct parent.
    """

    stem: str
    tier: Tier
    columns: tuple[str, ...]
    parents: tuple[tuple[str, Tier], ...]

    @property
    def length(self) -> int:
        return TIER_LENGTH[self.tier]


PROVINCES = Level("provinces", "province", ("code", "name"), ())
CITIES = Level("cities", "city", ("code", "name", "provinceCode"), (("provinceCode", "province"),))
COUNTIES = Level(
    "areas", "county", ("code", "name", "cityCode", "provinceCode"),
    (("cityCode", "city"), ("provinceCode", "province")),
)
TOWNSHIPS = Level(
    "streets", "township", ("code", "name", "areaCode", "provinceCode", "cityCode"),
    (("areaCode", "county"), ("provinceCode", "province"), ("cityCode", "city")),
)
COMMUNITIES = Level(
    "villages", "community",
    ("code", "name", "streetCode", "provinceCode", "cityCode", "areaCode"),
    (("streetCode", "township"), ("provinceCode", "province"), ("cityCode", "city"),
     ("areaCode", "county")),
)
LEVELS: tuple[Level, ...] = (PROVINCES, CITIES, COUNTIES, TOWNSHIPS, COMMUNITIES)


class NbsFormatError(ValueError):
    """A file of the edition that cannot be read as one; names the file and, if any, the line."""

    def __init__(self, path: Path, line: int | None, message: str) -> None:
        self.path = path
        self.line = line
        self.message = message
        where = f"{path}, line {line}" if line is not None else str(path)
        super().__init__(f"{where}: {message}")


class Record(NamedTuple):
    """One row: `values` are the file's columns in its order, `parent` the direct parent code.

    A named tuple rather than a frozen dataclass: it is built 620k times for the national files
    and costs about half as much.
    """

    code: str
    name: str
    parent: str | None
    line: int
    values: tuple[str, ...]


def _digits(value: str) -> bool:
    # str.isdigit() accepts "²" and other non-ASCII digits, which no division code contains.
    return value.isascii() and value.isdigit()


def check_prefixes(only: Sequence[str] | None) -> tuple[str, ...] | None:
    """The prefixes as a tuple, refusing what can never match a code."""
    if only is None:
        return None
    if isinstance(only, str):
        # A lone string would otherwise be taken as its characters: "5111" as 5, 1, 1, 1.
        raise TypeError("only: give a list of code prefixes, not a single string")
    prefixes = tuple(p.strip() for p in only)
    if not prefixes:
        raise ValueError("only: give at least one code prefix, or None for every division")
    for prefix in prefixes:
        if not _digits(prefix) or len(prefix) > TIER_LENGTH["community"]:
            raise ValueError(f"only: {prefix!r} is not a division code prefix (1 to 12 digits)")
    return prefixes


def wanted(code: str, prefixes: tuple[str, ...] | None) -> bool:
    """Whether a code is under one of the prefixes, or is an ancestor one of them needs."""
    if prefixes is None:
        return True
    return any(code.startswith(p) or p.startswith(code) for p in prefixes)


def selector(prefixes: tuple[str, ...] | None) -> Callable[[str], bool]:
    """`wanted` for division codes (2, 4, 6, 9 or 12 digits), fast enough for 620k rows."""
    if prefixes is None:
        return lambda code: True
    # A division code that a prefix starts with is one of the prefix's cuts at tier lengths.
    ancestors = frozenset(p[:n] for p in prefixes for n in TIER_LENGTH.values() if n <= len(p))
    return lambda code: code.startswith(prefixes) or code in ancestors


def locate(directory: Path | str, level: Level) -> Path:
    """The level's file in the directory, gzipped or not; both at once is refused as ambiguous."""
    directory = Path(directory)
    gz, plain = directory / f"{level.stem}.csv.gz", directory / f"{level.stem}.csv"
    if gz.is_file() and plain.is_file():
        raise NbsFormatError(directory, None,
                             f"both {gz.name} and {plain.name} exist; keep one of them")
    if gz.is_file():
        return gz
    if plain.is_file():
        return plain
    raise NbsFormatError(directory, None, f"neither {gz.name} nor {plain.name} exists")


def _open(path: Path) -> TextIO:
    # utf-8-sig: files saved by spreadsheet tools start with a byte-order mark.
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig", newline="")
    return path.open(encoding="utf-8-sig", newline="")


def read(path: Path, level: Level, only: Sequence[str] | None = None) -> Iterator[Record]:
    """The rows of one file, checked, in file order; `only` keeps rows `wanted` by its prefixes.

    Every row is checked, kept or not, so that a file is either good or reported.
    """
    keep = selector(check_prefixes(only))
    parents = tuple((index, TIER_LENGTH[tier]) for index, (_, tier) in enumerate(level.parents, 2))
    with _open(path) as handle:
        reader = csv.reader(handle)
        line = 0
        try:
            header = next(reader, None)
            line = reader.line_num
            if header is None:
                raise NbsFormatError(path, 1, "the file is empty; expected a header row")
            if tuple(h.strip() for h in header) != level.columns:
                raise NbsFormatError(path, line, f"header is {','.join(header)!r}, "
                                                 f"expected {','.join(level.columns)!r}")
            for row in reader:
                line = reader.line_num
                if not row:
                    continue
                if _plainly_valid(level.length, len(level.columns), parents, row):
                    if keep(row[0]):
                        yield Record(code=row[0], name=row[1], parent=row[2] if parents else None,
                                     line=line, values=tuple(row))
                    continue
                record = _record(path, level, line, row)
                if keep(record.code):
                    yield record
        except (UnicodeDecodeError, csv.Error, EOFError, OSError, zlib.error) as e:
            # EOFError and BadGzipFile (an OSError) are a truncated or corrupt gzip stream.
            raise NbsFormatError(path, line + 1, f"unreadable: {e}") from None


def read_level(directory: Path | str, level: Level,
               only: Sequence[str] | None = None) -> Iterator[Record]:
    return read(locate(directory, level), level, only)


def _plainly_valid(length: int, columns: int, parents: tuple[tuple[int, int], ...],
                   row: list[str]) -> bool:
    """Whether a row is well formed at a glance; if not, `_record` looks closer and says why.

    A code of ASCII digits whose cuts equal the parent columns proves those columns well formed
    too, so the common case costs a few comparisons (the national files have 660k rows).
    """
    if len(row) != columns:
        return False
    code, name = row[0], row[1]
    if (len(code) != length or not code.isdigit() or not code.isascii() or not name
            or len(name) > MAX_NAME_LENGTH or name.strip() != name):
        return False
    for index, cut in parents:
        if row[index] != code[:cut]:
            return False
    return True


def _record(path: Path, level: Level, line: int, row: list[str]) -> Record:
    if len(row) != len(level.columns):
        raise NbsFormatError(path, line, f"{len(row)} columns, expected {len(level.columns)} "
                                         f"({','.join(level.columns)})")
    values = tuple(v.strip() for v in row)
    code, name = values[0], values[1]
    if not _digits(code):
        raise NbsFormatError(path, line, f"code {code!r} is not all digits")
    if len(code) != level.length:
        raise NbsFormatError(path, line, f"code {code} has {len(code)} digits, but a "
                                         f"{level.tier} code in {level.stem} has {level.length}")
    if not name:
        raise NbsFormatError(path, line, f"{code} has no name")
    if len(name) > MAX_NAME_LENGTH:
        raise NbsFormatError(path, line, f"{code}'s name has {len(name)} characters, "
                                         f"more than {MAX_NAME_LENGTH}")
    for (column, tier), value in zip(level.parents, values[2:], strict=True):
        length = TIER_LENGTH[tier]
        if not _digits(value) or len(value) != length:
            raise NbsFormatError(path, line, f"{column} {value!r} is not a {tier} code "
                                             f"of {length} digits")
        if not code.startswith(value):
            raise NbsFormatError(path, line, f"code {code} does not start with its "
                                             f"{column} {value}")
    parent = values[2] if level.parents else None
    return Record(code=code, name=name, parent=parent, line=line, values=values)
