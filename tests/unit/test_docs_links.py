"""README.md and docs/*.md point only to what exists: every relative link `[text](path#anchor)` names a file
and a heading of it, every file path they name (`docs/x.md`, `tests/...py`, `tools/...py`, `conf/...yaml`)
exists, and every reference to a section by name (`README, "Studies"`, `README's *User models*`,
`docs/neural.md, "Evaluation"`) names a heading or a bold paragraph lead (`**Evaluation.**`) of that page.
No leftover `__MOVED__` markers. Anchors are GitHub's: the heading lower-cased, punctuation other than
`-` and `_` dropped, spaces turned into `-`.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
PATH = re.compile(r"(?<![\w/.-])((?:docs|tests|tools|conf|gsm|\.ci)/[\w/.-]*\w\.(?:md|py|yaml))\b")
# a page, then (after a comma or 's, optionally the word section) a quoted or starred section name
SECTION_REF = re.compile(r"(README|`?docs/\w+\.md`?)(?:,| ?'s)\s+(?:section\s+)?(?:\*([^*]+)\*|\"([^\"]+)\")")


def prose(text: str) -> str:
    """The text without fenced code blocks (commands and code are not references), whitespace joined."""
    return re.sub(r"\s+", " ", re.sub(r"```.*?```", " ", text, flags=re.S))


def slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def sections(page: Path) -> list[str]:
    """The headings (outside code blocks) and bold paragraph leads of a page, markup removed."""
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    heads = re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)
    leads = re.findall(r"^\*\*([^*]+?)[.:]?\*\*", text, re.M)
    return [re.sub(r"[*`]", "", h).strip() for h in heads + leads]


def page_of(name: str) -> Path:
    name = name.strip("`")
    return ROOT / "README.md" if name == "README" else ROOT / name


def problems(page: Path, source: str | None = None) -> list[str]:
    """What does not resolve in `page` (its text, or `source` read as the page's text)."""
    raw = page.read_text() if source is None else source
    text = prose(raw)
    found = []
    for target in LINK.findall(text):
        if re.match(r"^[a-z]+:", target):         # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            found.append(f"link to a missing file: ({target})")
        elif anchor and dest.suffix == ".md" and anchor not in {slug(h) for h in sections(dest)}:
            found.append(f"link to a missing heading: ({target})")
    for path in PATH.findall(re.sub(r"https?://\S+", "", text)):
        if not (ROOT / path).exists():
            found.append(f"missing file: {path}")
    for name, starred, quoted in SECTION_REF.findall(text):
        dest, wanted = page_of(name), (starred or quoted).strip().rstrip(".").lower()
        heads = [h.lower() for h in sections(dest)] if dest.exists() else []
        if not any(h == wanted or h.startswith(wanted + ":") for h in heads):
            found.append(f"reference to a missing section: {name}, {starred or quoted!r}")
    if "__MOVED__" in raw:
        found.append("a __MOVED__ marker")
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(ROOT).as_posix())
def test_every_reference_resolves(page):
    assert problems(page) == []


def test_the_checks_catch_what_they_are_for():
    """A page of docs/ with one broken reference of each kind: each is caught (the checks can fail)."""
    bad = ("# Bad\n\nSee [x](../README.md#no-such-heading), [y](nothere.md), `tools/no_such.py`,\n"
           "README, \"Performance\", README's *User models* and `docs/neural.md`, \"Nothing\".\n"
           "[ok](../README.md#a-five-minute-tour), docs/neural.md, \"Evaluation\"\n__MOVED__x\n")
    assert problems(ROOT / "docs" / "bad.md", bad) == [
        "link to a missing heading: (../README.md#no-such-heading)", "link to a missing file: (nothere.md)",
        "missing file: tools/no_such.py", "reference to a missing section: README, 'Performance'",
        "reference to a missing section: README, 'User models'",
        "reference to a missing section: `docs/neural.md`, 'Nothing'", "a __MOVED__ marker"]
