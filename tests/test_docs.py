"""The documentation's relative links resolve: every link in README.md and docs/ names a file of this
repository that exists, and every `#anchor` names a heading of its target page, so a moved or renamed page
or heading breaks the test command. (`make test` also builds the site with MkDocs, warnings as errors.)
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote

import pytest
from markdown.extensions.toc import slugify

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])

FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
CODE_SPAN = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), with an optional "title"; the target has no spaces.
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
EXPLICIT_ID = re.compile(r"\{\s*#([\w-]+)[^}]*\}\s*$")


def prose(text: str) -> str:
    """The page without fenced code blocks and code spans, where link-like text is not a link."""
    return CODE_SPAN.sub("", FENCE.sub("", text))


def anchors(page: Path) -> set[str]:
    """The ids MkDocs gives the page's headings (Python-Markdown's toc slugs, or an explicit `{#id}`)."""
    ids: set[str] = set()
    for heading in HEADING.findall(prose(page.read_text(encoding="utf-8"))):
        explicit = EXPLICIT_ID.search(heading)
        if explicit:
            ids.add(explicit.group(1))
            continue
        text = re.sub(r"`([^`]*)`", r"\1", heading)  # code in a heading keeps its text
        slug, n = slugify(text, "-"), 1
        while slug in ids:  # a repeated heading gets _1, _2, ... as in the toc extension
            slug, n = f"{slugify(text, '-')}_{n}", n + 1
        ids.add(slug)
    return ids


def relative_links(page: Path) -> list[str]:
    return [
        target
        for target in LINK.findall(prose(page.read_text(encoding="utf-8")))
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.IGNORECASE)  # http:, mailto:, ...
    ]


def test_there_are_pages_and_links_to_check() -> None:
    assert (ROOT / "docs" / "index.md") in PAGES
    assert sum(len(relative_links(p)) for p in PAGES) > 50


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_names_an_existing_file_and_heading(page: Path) -> None:
    broken = []
    for link in relative_links(page):
        path, _, anchor = link.partition("#")
        target = (page.parent / unquote(path)).resolve() if path else page
        if not target.is_relative_to(ROOT):
            broken.append(f"{link}: points outside the repository")
        elif not target.exists():
            broken.append(f"{link}: {target.relative_to(ROOT)} does not exist")
        elif anchor and target.suffix == ".md" and anchor not in anchors(target):
            broken.append(f"{link}: {target.relative_to(ROOT)} has no heading with the id {anchor!r}")
    assert not broken, f"{page.relative_to(ROOT)} has broken links:\n" + "\n".join(broken)


def test_the_docs_link_only_to_pages_of_the_site() -> None:
    """A page under docs/ that links outside docs/ builds a site with a dead link: name such files as code."""
    docs = ROOT / "docs"
    outside = [
        f"{page.relative_to(ROOT)}: {link}"
        for page in PAGES
        if page.is_relative_to(docs)
        for link in relative_links(page)
        if link.partition("#")[0]
        and not (page.parent / link.partition("#")[0]).resolve().is_relative_to(docs)
    ]
    assert not outside, "links from docs/ to files outside it:\n" + "\n".join(outside)
