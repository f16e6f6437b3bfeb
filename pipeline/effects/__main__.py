"""``python -m pipeline.effects``: print the hardware-model table generated from the registry;
``--page docs/hardware-model.md`` writes it between the page's ``effects-table`` markers."""

import argparse
import re
from pathlib import Path

from pipeline.effects import markdown_table

START, END = "<!-- effects-table:start -->", "<!-- effects-table:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--page", help="a markdown file whose table between the markers is replaced")
    args = parser.parse_args()
    table = markdown_table()
    if not args.page:
        print(table, end="")
        return
    path = Path(args.page)
    text = path.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{path}: no {START} ... {END} markers")
    path.write_text(re.sub(f"{re.escape(START)}.*?{re.escape(END)}", lambda _: f"{START}\n{table}{END}", text, flags=re.S))


if __name__ == "__main__":
    main()
