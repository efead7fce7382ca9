"""The docs cover the public API: every exported name, callback option and CLI option."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import dave_lightning
from dave_lightning import DAVEMonitor, metrics
from dave_lightning.cli import build_parser

DOCS = Path(__file__).parent.parent / "docs"


def _text(name: str) -> str:
    return (DOCS / name).read_text()


def test_every_exported_name_is_documented() -> None:
    text = "".join(p.read_text() for p in DOCS.glob("*.md"))
    for name in dave_lightning.__all__ + metrics.__all__:
        assert name in text, f"{name} is not documented in docs/"


def test_every_callback_option_is_documented() -> None:
    text = _text("callback.md")
    for name in inspect.signature(DAVEMonitor.__init__).parameters:
        if name != "self":
            assert f"`{name}`" in text, f"DAVEMonitor option {name} is not in docs/callback.md"


def test_every_cli_option_is_documented() -> None:
    text = _text("cli.md")
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    for command, subparser in subparsers.choices.items():
        assert f"dave-lightning {command}" in text, command
        for action in subparser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help":
                    assert option in text, f"{command} {option} is not in docs/cli.md"


def test_docs_link_to_existing_files() -> None:
    for page in [*DOCS.glob("*.md"), DOCS.parent / "README.md"]:
        for target in re.findall(r"\]\(([^)#]+)\)", page.read_text()):
            if not target.startswith("http"):
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"
