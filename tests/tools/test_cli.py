"""The programs' error wrapper: a user's mistake is one ``error:`` line, a bug keeps its traceback."""

from __future__ import annotations

import errno
import re

import pytest

from backbones.registry import UsageError, check_kwargs
from tools.engine.cli import run_cli
from tools.train_seg import main

from tests.tools.fixtures import single_thread, tiny_run_args  # noqa: F401

pytestmark = pytest.mark.usefixtures("single_thread")


def fails_with(call, *args):
    """Exit status of ``call(*args)``, which must exit."""
    with pytest.raises(SystemExit) as info:
        call(*args)
    return info.value.code


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: "), err
    return err


def test_usage_error_is_a_type_error():
    # library callers that catch TypeError still catch the deliberate ones
    with pytest.raises(TypeError, match=r"got unexpected keyword argument\(s\) 'ouput_stride' \(did you mean "
                                        r"'output_stride'\?\)"):
        check_kwargs(lambda *, output_stride=32: None, {"ouput_stride": 8}, what="backbone 'x'")
    assert issubclass(UsageError, TypeError)


@pytest.mark.parametrize("flag, value, message", [
    ("--data-kwargs", "{num_imgs: 8}", r"dataset 'synthetic' got unexpected keyword argument\(s\) 'num_imgs' "
                                       r"\(did you mean 'num_images'\?\)"),
    ("--head-kwargs", "{dropuot: 0.1}", r"head '\w+' got unexpected keyword argument\(s\) 'dropuot'"),
    ("--head-kwargs", "{num_classes: 3}", r"head_kwargs must not contain 'num_classes'"),
])
def test_a_deliberate_type_error_is_one_line(tmp_path, capsys, flag, value, message):
    assert fails_with(main, tiny_run_args(tmp_path, "run", flag, value)) == 1
    assert re.search(message, one_error_line(capsys))


def test_a_bug_keeps_its_traceback(capsys):
    def buggy(argv):
        return len(argv) + "1"  # a TypeError no one raised on purpose

    with pytest.raises(TypeError, match="unsupported operand"):
        run_cli(buggy, ["--x"])
    assert capsys.readouterr().err == ""  # nothing printed over it: Python prints the traceback


def test_os_errors_are_one_line_naming_the_path(tmp_path, capsys):
    taken = tmp_path / "runs"
    taken.write_text("a file where the run folders should go")
    assert fails_with(main, tiny_run_args(taken, "run")) == 1
    assert f"Not a directory: '{taken / 'run'}" in one_error_line(capsys)

    def full_disk(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "out/last.pt")

    assert fails_with(run_cli, full_disk) == 1
    assert one_error_line(capsys) == "error: [Errno 28] No space left on device: 'out/last.pt'\n"
