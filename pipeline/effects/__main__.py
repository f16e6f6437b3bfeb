"""``python -m pipeline.effects [--page FILE]``: the registry's table, printed or written between FILE's markers."""

import argparse
import re
from pathlib import Path

from pipeline.effects import markdown_table

parser = argparse.ArgumentParser(description=__doc__)
parser.add_argument("--page", help="a markdown file whose table between the effects-table markers is replaced")
page, table = parser.parse_args().page, markdown_table()
START, END = "<!-- effects-table:start -->", "<!-- effects-table:end -->"
if page and (START not in (text := Path(page).read_text()) or END not in text):
    raise SystemExit(f"{page}: no {START} ... {END} markers")
if page:
    Path(page).write_text(re.sub(f"{re.escape(START)}.*?{re.escape(END)}", lambda _: f"{START}\n{table}{END}", text, flags=re.S))
else:
    print(table, end="")
