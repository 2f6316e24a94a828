"""Cutting a few provinces, cities or counties out of an NBS edition, as plain CSV files.

The demo edition in cso/divisions/demo was made with

    python -m cso.divisions.subset /work/shared/data/divisions cso/divisions/demo 5111 510681

which keeps 乐山市 (5111) whole, 广汉市 (510681) whole, and the rows of 四川省 (51) and 德阳市
(5106) those two need, but no other county of 德阳市.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from . import nbs


def _line(level: nbs.Level, values: tuple[str, ...]) -> str:
    # Written like the NBS files: only the name quoted, so a subset diffs cleanly against them.
    cells = [f'"{v.replace(chr(34), chr(34) * 2)}"' if column == "name" else v
             for column, v in zip(level.columns, values, strict=True)]
    return ",".join(cells) + "\n"


def write_subset(source: Path | str, target: Path | str, prefixes: Sequence[str]) -> dict[str, int]:
    """Write the rows `nbs.wanted` by the prefixes to `target/<stem>.csv`; the rows per file.

    Each file is written to a temporary name first, so an error in the source (reported with
    its file and line) leaves no half-written file behind.
    """
    target = Path(target)
    selected = nbs.check_prefixes(prefixes)
    if selected is None:
        raise ValueError("prefixes: give at least one")
    target.mkdir(parents=True, exist_ok=True)
    for level in nbs.LEVELS:
        gz = target / f"{level.stem}.csv.gz"
        if gz.exists():
            # Writing the plain file beside it would leave the directory ambiguous to read.
            raise FileExistsError(f"{gz} exists; the subset is written as plain CSV")
    counts: dict[str, int] = {}
    for level in nbs.LEVELS:
        path = target / f"{level.stem}.csv"
        partial = path.with_suffix(".csv.partial")
        rows = 0
        with partial.open("w", encoding="utf-8", newline="") as out:
            out.write(",".join(level.columns) + "\n")
            for record in nbs.read_level(source, level, selected):
                out.write(_line(level, record.values))
                rows += 1
        partial.replace(path)
        counts[level.stem] = rows
    return counts


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m cso.divisions.subset",
        description="Copy the divisions under some code prefixes, and their ancestors, "
                    "from an NBS edition into plain CSV files.")
    parser.add_argument("source", type=Path, help="directory of the five NBS files")
    parser.add_argument("target", type=Path, help="directory to write the subset to")
    parser.add_argument("prefixes", nargs="+", help="code prefixes, e.g. 5111 510681")
    args = parser.parse_args(argv)
    try:
        counts = write_subset(args.source, args.target, args.prefixes)
    except (ValueError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for stem, rows in counts.items():
        print(f"{stem}: {rows}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
