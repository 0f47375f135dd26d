"""Every relative link in the documents a user reads points to a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = ["README.md", "benchmarks/RESULTS.md", "serve/deploy/README.md", "train/data/README.md"]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def relative_links(text: str) -> list[str]:
    return [target.split("#")[0] for target in LINK.findall(text)
            if not re.match(r"[a-z]+:", target) and not target.startswith("#")]


def test_the_link_pattern_finds_images_and_links():
    assert relative_links("![a](results/a.png) [b](../b.md#x) [c](https://x.org) [d](#top)") == [
        "results/a.png", "../b.md"]


@pytest.mark.parametrize("document", [d for d in DOCUMENTS if (ROOT / d).exists()])
def test_every_relative_link_resolves(document):
    path = ROOT / document
    missing = [t for t in relative_links(path.read_text()) if not (path.parent / t).exists()]
    assert missing == [], f"{document} links to missing files: {missing}"
