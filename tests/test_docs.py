"""The reference docs are kept true by checking them against the code they describe."""

from __future__ import annotations

from pathlib import Path

import click

from trioserve._cli import cli

DOCS = Path(__file__).parent.parent / "docs"


def test_cli_reference_names_every_option() -> None:
    text = (DOCS / "cli.md").read_text()
    missing = [
        name
        for param in cli.params
        if isinstance(param, click.Option)
        for name in param.opts + param.secondary_opts
        if f"`{name}" not in text and f" {name}`" not in text and f"{name} " not in text
    ]
    assert missing == []


def test_every_doc_page_is_linked_from_the_index() -> None:
    index = (DOCS / "index.md").read_text()
    pages = sorted(path.name for path in DOCS.glob("*.md") if path.name != "index.md")
    assert [page for page in pages if f"({page})" not in index] == []
