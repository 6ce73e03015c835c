"""Signals become a stop request that the training loop honours between steps; a second one stops a single
process at once; the previous handlers come back."""

from __future__ import annotations

import signal

import pytest

from tools.engine.interrupt import StopOnSignal, TrainingInterrupted


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_first_signal_asks_second_stops_at_once(signum):
    before = signal.getsignal(signum)
    with StopOnSignal() as stop:
        assert stop.requested() is None
        signal.raise_signal(signum)
        assert stop.requested() == signum
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(signum)
    assert signal.getsignal(signum) == before


def test_under_torchrun_a_second_signal_only_asks_again():
    with StopOnSignal(second_stops_at_once=False) as stop:
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)  # the launcher's forwarded copy
        assert stop.requested() == signal.SIGINT


def test_exit_codes_follow_the_shell_convention():
    assert TrainingInterrupted("x", signal.SIGINT).exit_code == 130
    assert TrainingInterrupted("x", signal.SIGTERM).exit_code == 143
