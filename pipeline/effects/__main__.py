"""``python -m pipeline.effects [--page FILE]``: the registry's table, printed or written between FILE's markers."""

import argparse
import re
from pathlib import Path

from pipeline.effects import markdown_table

START, END = "<!-- effects-table:start -->", "<!-- effects-table:end -->"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--page", help="a markdown file whose table between the effects-table markers is replaced")
    page, table = parser.parse_args().page, markdown_table()
    if not page:
        print(table, end="")
        return
    text = Path(page).read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{page}: no {START} ... {END} markers")
    Path(page).write_text(re.sub(f"{re.escape(START)}.*?{re.escape(END)}", lambda _: f"{START}\n{table}{END}", text, flags=re.S))


if __name__ == "__main__":
    main()
