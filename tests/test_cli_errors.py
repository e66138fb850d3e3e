"""Every CLI failure is one ``hubedit: error: ...`` line on stderr and exit status 2: usage errors, hubedit's
own errors, and errors of other libraries (which used to print a traceback)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from hubedit import cli


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{err}"
    assert lines[0].startswith("hubedit: error: ")
    return lines[0]


def test_usage_error_is_one_line(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["zoo", "build", "--task", "mnist", "--out", "x"])
    assert exit_info.value.code == 2
    line = _one_error_line(capsys)
    assert "invalid choice: 'mnist'" in line and "hubedit zoo build --help" in line


def test_foreign_exception_is_one_line_naming_its_type(monkeypatch, capsys):
    def boom(args):
        raise ValueError("shape mismatch\n  second line of a library's message")

    parser = cli.build_parser()
    args = parser.parse_args(["zoo", "info", "somewhere"])
    monkeypatch.setattr(cli, "build_parser", lambda: _FixedParser(args, boom))
    assert cli.main(["zoo", "info", "somewhere"]) == 2
    line = _one_error_line(capsys)
    assert line == "hubedit: error: ValueError: shape mismatch second line of a library's message"


def test_debug_variable_gives_the_traceback(monkeypatch):
    def boom(args):
        raise KeyError("k")

    parser = cli.build_parser()
    args = parser.parse_args(["zoo", "info", "somewhere"])
    monkeypatch.setattr(cli, "build_parser", lambda: _FixedParser(args, boom))
    monkeypatch.setenv("HUBEDIT_DEBUG", "1")
    with pytest.raises(KeyError):
        cli.main(["zoo", "info", "somewhere"])


def test_mistyped_local_path_is_one_line_not_a_repo_lookup(tmp_path):
    """A path that does not exist used to reach huggingface_hub's repo-id validation (HFValidationError traceback)."""
    missing = tmp_path / "zoos" / "adult-tiny"
    proc = subprocess.run(
        [sys.executable, "-m", "hubedit", "zoo", "info", str(missing)],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, timeout=120,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hubedit: error: "), proc.stderr
    assert "not an existing local folder" in lines[0] and "Traceback" not in proc.stderr


class _FixedParser:
    """A parser whose parse_args returns prepared args bound to ``func``."""

    def __init__(self, args, func):
        self._args = args
        self._args.func = func

    def parse_args(self, argv):
        return self._args
