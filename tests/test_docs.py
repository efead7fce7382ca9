"""The docs name the public API where a reader looks for it, link to files that exist, and
say which script printed every benchmark figure.

Every ``DAVEMonitor`` option has its own row in the options table of docs/callback.md, every
exported name appears backticked (exactly, not as part of a longer name) in its own page, and
every CLI option in its own command's section of docs/cli.md.
"""

from __future__ import annotations

import argparse
import inspect
import re
from pathlib import Path

import pytest

import dave_lightning
from dave_lightning import DAVEMonitor, metrics
from dave_lightning.cli import build_parser

DOCS = Path(__file__).parent.parent / "docs"
# Which page documents which exported name.
PAGES = {
    **{name: "metrics.md" for name in metrics.__all__},
    "DAVE": "method.md",
    "DAVESettings": "method.md",
    "effective_mode": "method.md",
    "InputXGradient": "method.md",
    "InputXEffective": "method.md",
    "DAVEMonitor": "callback.md",
    "ProbeMonitor": "beyond_the_trainer.md",
}


def _text(page: str) -> str:
    return (DOCS / page).read_text()


def _section(text: str, heading: str) -> str:
    """From the line ``heading`` up to the next ``## `` heading (or the end)."""
    lines = text.splitlines()
    start = lines.index(heading)  # ValueError names a missing heading
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end])


def _table_first_cells(section: str) -> list[str]:
    """First cells of the markdown table rows of a section (header and rule rows excluded)."""
    cells = []
    for line in section.splitlines():
        if line.startswith("|") and not re.match(r"^\|\s*-", line):
            cells.append(line.split("|")[1].strip())
    return cells[1:]  # the header row


def _backticked(name: str, text: str) -> bool:
    """``name`` as an exact identifier in backticks: `name`, `name(...)`, `name.attr`, also
    qualified with its module (`dave_lightning.name`, `dave_lightning.metrics.name`)."""
    prefix = r"(?:dave_lightning\.(?:metrics\.)?)?"
    return re.search(rf"`{prefix}{re.escape(name)}[`(.\[]", text) is not None


def _monitor_options() -> list[str]:
    return [name for name in inspect.signature(DAVEMonitor.__init__).parameters if name != "self"]


@pytest.mark.parametrize("option", _monitor_options())
def test_every_monitor_option_has_a_row_in_the_options_table(option: str) -> None:
    options = _section(_text("callback.md"), "## Options")
    cells = _table_first_cells(options)
    assert any(re.search(rf"`{re.escape(option)}`", cell) for cell in cells), (
        f"DAVEMonitor option {option!r} has no row in the options table of docs/callback.md"
    )


def test_the_options_table_documents_no_option_that_does_not_exist() -> None:
    cells = _table_first_cells(_section(_text("callback.md"), "## Options"))
    documented = {name for cell in cells for name in re.findall(r"`([a-z_0-9]+)`", cell)}
    assert documented <= set(_monitor_options()), documented - set(_monitor_options())


@pytest.mark.parametrize("name", sorted(set(dave_lightning.__all__) | set(metrics.__all__)))
def test_every_exported_name_is_backticked_in_its_page(name: str) -> None:
    page = PAGES[name]  # KeyError: a new export needs a page here
    assert _backticked(name, _text(page)), f"`{name}` is not in docs/{page}"


def _cli_options() -> list[tuple[str, str]]:
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return [
        (command, option)
        for command, subparser in subparsers.choices.items()
        for action in subparser._actions
        for option in action.option_strings
        if option.startswith("--") and option != "--help"
    ]


@pytest.mark.parametrize(("command", "option"), _cli_options())
def test_every_cli_option_is_in_its_commands_section(command: str, option: str) -> None:
    section = _section(_text("cli.md"), f"## `dave-lightning {command}`")
    # `--option` or `--option ARG`, as a whole option name (not the prefix of a longer one)
    assert re.search(rf"`{re.escape(option)}(?![\w-])", section), (
        f"{command} {option} is not in the `dave-lightning {command}` section of docs/cli.md"
    )


def _anchors(page: Path) -> set[str]:
    """The anchors of a page's headings, as GitHub makes them."""
    headings = re.findall(r"^#+ (.+)$", page.read_text(), flags=re.M)
    return {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}


def test_docs_link_to_existing_files_and_sections() -> None:
    for page in [*DOCS.glob("*.md"), DOCS.parent / "README.md"]:
        for target, anchor in re.findall(r"\]\(([^)#\s]*)(?:#([^)\s]+))?\)", page.read_text()):
            if target.startswith("http"):
                continue
            linked = page.parent / target if target else page
            assert linked.exists(), f"{page.name} links to missing {target}"
            if anchor and linked.suffix == ".md":
                assert anchor in _anchors(linked), f"{page.name} links to missing {target}#{anchor}"


def _figure_blocks(text: str) -> list[tuple[str, str]]:
    """(text before, fenced block) for every ``` block that is not code to copy."""
    blocks = []
    for match in re.finditer(r"```(\w*)\n(.*?)```", text, flags=re.S):
        if match[1] in ("", "text"):
            blocks.append((text[: match.start()], match[2]))
    return blocks


def test_every_benchmark_figure_names_its_script_and_command() -> None:
    """Each block of figures in docs/benchmarks.md follows the command that printed it, and
    `make bench` runs that command with the settings the text states."""
    text = _text("benchmarks.md")
    makefile = (DOCS.parent / "Makefile").read_text()
    bench = makefile.split("\nbench:", 1)[1].split("\n\n", 1)[0].splitlines()
    blocks = _figure_blocks(text)
    assert len(blocks) >= 7
    for before, block in blocks:
        commands = re.findall(
            r"`((?:python )?benchmarks/[\w.]+\.py[^`]*|dave-lightning demo[^`]*)`", before
        )
        assert commands, f"no command before the block {block[:60]!r}"
        words = commands[-1].removeprefix("python ").split()
        script = words[0] if words[0].startswith("benchmarks/") else "dave-lightning demo"
        if script.startswith("benchmarks/"):
            assert (DOCS.parent / script).is_file(), script
        args = [w for i, w in enumerate(words[1:]) if "--checkpoint" not in words[i : i + 2]]
        lines = [line for line in bench if script in line]
        assert lines, f"`make bench` does not run {script}"
        stated = " ".join(arg for arg in args if arg != "demo")
        assert any(stated in line for line in lines), (
            f"`make bench` runs {script} with other settings than the docs state: {lines}"
        )
