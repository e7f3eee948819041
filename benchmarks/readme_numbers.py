"""Print, check or update the README's organism results table from a `make demo` folder.

    python benchmarks/readme_numbers.py                      # print the table of runs/demo
    python benchmarks/readme_numbers.py runs/demo --update   # rewrite it in README.md
    python benchmarks/readme_numbers.py runs/demo --check    # exit 1 when README.md differs

Every number comes from the stages' summary files (countlens.report.headline.readme_rows), so
the README cannot drift from what `make demo` measures. The table sits between the markers
`<!-- readme-numbers:start -->` and `<!-- readme-numbers:end -->` in the README.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

START, END = "<!-- readme-numbers:start -->", "<!-- readme-numbers:end -->"
ROOT = Path(__file__).resolve().parents[1]


def replace_block(text: str, table: str) -> str:
    """`text` with the lines between START and END replaced by `table`."""
    if START not in text or END not in text or text.index(START) > text.index(END):
        raise SystemExit(f"the README has no {START} ... {END} block to update")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", nargs="?", default=str(ROOT / "runs" / "demo"), help="a study folder (default runs/demo)")
    ap.add_argument("--readme", default=str(ROOT / "README.md"))
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--update", action="store_true", help="rewrite the table in the README")
    mode.add_argument("--check", action="store_true", help="exit 1 when the README's table differs")
    args = ap.parse_args(argv)

    from countlens.report.headline import readme_table

    run = Path(args.run)
    if not (run / "config.yaml").exists():
        sys.stderr.write(f"error: {run} is not a study folder (no config.yaml); run `make demo` first\n")
        return 2
    table = readme_table(run)
    if not args.update and not args.check:
        sys.stdout.write(table + "\n")
        return 0
    readme = Path(args.readme)
    text = readme.read_text()
    new = replace_block(text, table)
    if args.check:
        if new != text:
            sys.stderr.write(f"{readme}: the results table differs from {run} (run with --update)\n")
            return 1
        return 0
    readme.write_text(new)
    sys.stdout.write(f"updated {readme} from {run}\n" + table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
