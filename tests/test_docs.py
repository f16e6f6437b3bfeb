"""Every link of the README, the docs and the tutorial's index resolves to a file of the repository."""

import re

import pytest

from conftest import PROJECT_ROOT

PAGES = sorted([PROJECT_ROOT / "README.md", *(PROJECT_ROOT / "docs").glob("*.md"), *(PROJECT_ROOT / "tutorial").glob("*.md")])
LINK = re.compile(r"\]\(([^)\s]+)\)")


def local_links(page):
    return [target for target in LINK.findall(page.read_text()) if not re.match(r"[a-z]+:", target) and not target.startswith("#")]


@pytest.mark.parametrize("page", PAGES, ids=[str(page.relative_to(PROJECT_ROOT)) for page in PAGES])
def test_every_link_resolves_to_a_file_of_the_repository(page):
    missing = [target for target in local_links(page) if not (page.parent / target.split("#")[0]).exists()]
    assert not missing, f"{page.name}: {missing}"


def test_the_readme_is_read_in_five_minutes():
    readme = (PROJECT_ROOT / "README.md").read_text()
    assert readme.count("\n") <= 200
    assert len(local_links(PROJECT_ROOT / "README.md")) >= 10  # the rest lives in docs/ and tutorial/
