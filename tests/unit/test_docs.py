"""The README stays short and every link in the docs leads somewhere: README.md at most 12 KB, every relative
link of README.md and docs/*.md names a file (and heading) that exists, every `make` target the README names is
one `make help` lists."""
import re
import subprocess
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
README = REPO_ROOT / "README.md"
PAGES = [README, *sorted((REPO_ROOT / "docs").glob("*.md"))]
README_LIMIT = 12_000  # bytes

FENCE = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def prose(text: str) -> str:
    """The text without fenced code blocks (links and headings there are not links and headings)."""
    return FENCE.sub("", text)


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.strip().lower())  # a link in a heading: its text
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    found = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", prose(page.read_text()), re.M):
        base = slug(heading)
        n = seen.get(base, 0)
        seen[base] = n + 1
        found.add(base if n == 0 else f"{base}-{n}")
    return found


def relative_links(page: Path) -> list[str]:
    return [target for target in LINK.findall(prose(page.read_text()))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: ...


def test_readme_is_at_most_12_kb():
    size = len(README.read_bytes())
    assert size <= README_LIMIT, f"README.md has {size} bytes; move detail to docs/ (limit {README_LIMIT})"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_relative_link_leads_to_an_existing_file_and_heading(page):
    broken = []
    for target in relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no file {dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            broken.append(f"{target}: no heading #{anchor} in {dest.name}")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_docs_pages_are_linked_from_the_readme():
    linked = {(README.parent / t.partition("#")[0]).resolve() for t in relative_links(README)}
    missing = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not missing, f"docs pages the README does not link: {missing}"


def make_targets_named(text: str) -> set[str]:
    """`make X` inside inline code or code blocks: the commands the README tells its reader to run."""
    code = " ".join(FENCE.findall(text) + re.findall(r"`([^`\n]+)`", FENCE.sub("", text)))
    return set(re.findall(r"\bmake +([a-z][a-z0-9-]*)", code))


def test_every_make_target_the_readme_names_is_in_make_help():
    listed = subprocess.run(["make", "-s", "help"], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout
    available = set(re.findall(r"^\s*make +([a-z][a-z0-9-]*)", listed, re.M))
    named = make_targets_named(README.read_text())
    assert {"setup", "serve", "test", "help"} <= named, named  # the README's own commands
    assert named <= available, f"README names make targets that `make help` does not list: {named - available}"


def test_the_checks_catch_what_they_look_for(tmp_path):
    """The helpers above find a broken link, a missing heading and a made-up make target."""
    page = tmp_path / "page.md"
    page.write_text("# A `b` (c)\n\n[x](missing.md) [y](page.md#nope) [z](#a-b-c) [w](https://example.com)\n"
                    "```\n[in code](nowhere.md)\n```\nrun `make nonsense`\n")
    assert relative_links(page) == ["missing.md", "page.md#nope", "#a-b-c"]
    assert anchors(page) == {"a-b-c"}
    assert make_targets_named(page.read_text()) == {"nonsense"}
