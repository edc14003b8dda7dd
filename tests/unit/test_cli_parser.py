"""The ``esdistill`` argument parser: options are matched exactly, never by prefix (no torch, no ES)."""

from __future__ import annotations

import argparse

import pytest
from esdistill.plugin.cli import build_parser


def _parsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    out, todo = [], [("esdistill", parser)]
    while todo:
        name, p = todo.pop()
        out.append((name, p))
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                todo.extend((f"{name} {sub}", child) for sub, child in action.choices.items())
    return out


def _error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(argv)
    assert exc.value.code == 2
    return capsys.readouterr().err


def test_every_parser_and_sub_parser_turns_abbreviations_off():
    parsers = _parsers(build_parser())
    assert len(parsers) > 10  # the whole tree was walked (index create, es start, models fetch, ...)
    assert [name for name, p in parsers if p.allow_abbrev] == []


def test_index_create_with_index_is_refused_not_read_as_index_options(capsys):
    err = _error(["index", "create", "--index", "x", "--model", "m"], capsys)
    assert "unrecognized arguments: --index" in err
    assert "--index-options" not in err.splitlines()[-1]  # not "invalid choice" for --index-options


@pytest.mark.parametrize("argv, prefix", [
    (["index", "create", "x", "--model", "m", "--index-opt", "flat"], "--index-opt"),
    (["distill", "--corpus", "c", "--out", "o", "--epoch", "2"], "--epoch"),
    (["--verb", "search", "--index", "i", "q"], "--verb"),
])
def test_a_prefix_of_a_long_option_is_an_error(argv, prefix, capsys):
    assert f"unrecognized arguments: {prefix}" in _error(argv, capsys)


def test_exact_options_still_parse():
    args = build_parser().parse_args(["index", "create", "x", "--model", "m", "--index-options", "flat"])
    assert args.name == "x" and args.index_options == "flat"
    assert build_parser().parse_args(["distill", "--corpus", "c", "--out", "o", "--epochs", "2"]).epochs == 2
