"""Every relative link in the documents a user reads points to a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# Every document is checked, and a missing one fails: a deleted document leaves this list in the same change.
DOCUMENTS = ["README.md", "benchmarks/RESULTS.md", "benchmarks/results/bench.md", "serve/deploy/README.md",
             "train/data/README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
# A repository document the README names in code (`serve/deploy/README.md`) rather than links to.
NAMED_DOCUMENT = re.compile(r"`((?:benchmarks|export|protos|serve|train)/[\w./-]+\.md)`")


def relative_links(text: str) -> list[str]:
    return [target.split("#")[0] for target in LINK.findall(text)
            if not re.match(r"[a-z]+:", target) and not target.startswith("#")]


def test_the_link_pattern_finds_images_and_links():
    assert relative_links("![a](results/a.png) [b](../b.md#x) [c](https://x.org) [d](#top)") == [
        "results/a.png", "../b.md"]


@pytest.mark.parametrize("document", DOCUMENTS)
def test_every_relative_link_resolves(document):
    path = ROOT / document
    assert path.is_file(), f"{document} is gone: remove it from DOCUMENTS, and the README's mentions of it"
    missing = [t for t in relative_links(path.read_text()) if not (path.parent / t).exists()]
    assert missing == [], f"{document} links to missing files: {missing}"


def test_every_document_the_documents_name_or_link_to_is_checked():
    reached = set()
    for document in DOCUMENTS:
        path = ROOT / document
        text = path.read_text()
        reached |= {(path.parent / t).resolve() for t in relative_links(text) if t.endswith(".md")}
        if document == "README.md":
            reached |= {(ROOT / name).resolve() for name in NAMED_DOCUMENT.findall(text)}
    unchecked = sorted(str(p.relative_to(ROOT)) for p in reached - {(ROOT / d).resolve() for d in DOCUMENTS})
    assert unchecked == [], f"documents a user is sent to but whose links are not checked: {unchecked}"
    assert {"serve/deploy/README.md", "benchmarks/RESULTS.md", "train/data/README.md"} <= {
        str(p.relative_to(ROOT)) for p in reached}  # the pattern finds the README's mentions
