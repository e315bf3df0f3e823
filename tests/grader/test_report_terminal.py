"""The command line's side of the terminal summary: bad option values are one line, --quiet exists."""

from __future__ import annotations

import pytest

from grader.cli import build_parser, main


@pytest.mark.parametrize("argv, says", [
    (["submit", "x.ipynb", "--seed", "abc"], "argument --seed: invalid int value: 'abc'"),
    (["submit", "x.ipynb", "--timeout", "-5"], "argument --timeout: must be positive: -5"),
    (["submit", "x.ipynb", "--timeout", "nan"], "argument --timeout: must be positive: nan"),
    (["submit", "x.ipynb", "--cell-timeout", "soon"], "argument --cell-timeout: not a number: 'soon'"),
    (["submit", "x.ipynb", "--device", "tpu\x1b[2J"], "invalid choice: 'tpu\\x1b[2J'"),
    (["submit"], "the following arguments are required: path"),
    ([], "the following arguments are required: COMMAND"),
    (["submit", "x.ipynb", "--memory-limit", "4G\x07\x1b[2J"], "not a size: '4G\\x07\\x1b[2J'"),
])
def test_a_bad_option_is_one_line(argv, says, capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.count("\n") == 1 and err.startswith("grade: error: ") and says in err, err
    assert "usage:" not in err and "\x1b" not in err


def test_quiet_and_json_are_options_of_submit() -> None:
    args = build_parser().parse_args(["submit", "x.ipynb", "--quiet"])
    assert args.quiet and not args.json
    assert build_parser().parse_args(["submit", "x.ipynb", "-q", "--json"]).json
