"""Autostop on a real local daemon: idle for autostop_mins -> the stop action runs and the daemon stops; work of
any kind keeps it up; keep_warm() turns it off. Fractional minutes keep the tests short."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from runhouse.daemon_files import DaemonFiles
from runhouse.errors import BadRequestError
from runhouse.resources.clusters import local_daemon
from tests.integration import funcs

SECOND = 1 / 60  # in minutes


def _stops_within(box, seconds: float) -> float:
    began = time.monotonic()
    while time.monotonic() - began < seconds:
        if local_daemon.health(box.server_port) is None:
            return time.monotonic() - began
        time.sleep(0.05)
    raise AssertionError(f"the daemon still answers after {seconds} s")


def _log(box) -> str:
    return Path(DaemonFiles.local(box.server_port).log).read_text()


def test_an_idle_daemon_stops_itself_and_says_why(own_cluster):
    own_cluster.keep_warm(autostop_mins=1 * SECOND)
    assert own_cluster.status()["autostop"]["minutes"] == pytest.approx(SECOND)
    took = _stops_within(own_cluster, 10)
    assert took >= 0.5
    assert "runhouse autostop: no call, command or stream" in _log(own_cluster)
    deadline = time.monotonic() + 10
    while local_daemon.running_pid(own_cluster.server_port) is not None:  # it finishes stopping its workers
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_the_stop_command_runs_before_the_daemon_stops(own_cluster, tmp_path):
    marker = tmp_path / "stopped"
    own_cluster._set_autostop(1 * SECOND, f"echo stopped-by-autostop > {marker}", set_commands=True)
    _stops_within(own_cluster, 10)
    assert marker.read_text().strip() == "stopped-by-autostop"
    assert "the stop command exited with code 0" in _log(own_cluster)


def test_the_keepalive_command_runs_while_in_use_and_not_when_idle(own_cluster, tmp_path):
    from runhouse import function

    beats = tmp_path / "beats"
    fn = function(funcs.slow_pid).to(own_cluster)
    own_cluster._set_autostop(12 * SECOND, None, f"date +%s.%N >> {beats}", set_commands=True)
    fn(7.0)  # in use for 7 s: the keepalive runs every 6 s (half the idle time) meanwhile
    assert beats.exists() and len(beats.read_text().split()) >= 1
    time.sleep(6.5)  # the use that ended may still earn one beat
    settled = len(beats.read_text().split())
    time.sleep(3.0)  # idle, short of the autostop: no more beats
    assert len(beats.read_text().split()) == settled
    own_cluster.keep_warm()


def test_a_running_call_keeps_the_daemon_up(own_cluster):
    from runhouse import function

    fn = function(funcs.slow_pid).to(own_cluster)
    own_cluster.keep_warm(autostop_mins=0.5 * SECOND)
    fn(3.0)  # three times the idle time, all of it in a call
    assert local_daemon.health(own_cluster.server_port) is not None
    _stops_within(own_cluster, 10)


def test_a_running_command_keeps_the_daemon_up(own_cluster):
    own_cluster.keep_warm(autostop_mins=0.5 * SECOND)
    assert own_cluster.run(["sleep 2.5; echo done"], stream_logs=False)[0][1] == "done\n"
    assert local_daemon.health(own_cluster.server_port) is not None
    _stops_within(own_cluster, 10)


def test_a_remote_call_still_running_keeps_the_daemon_up(own_cluster):
    from runhouse import function

    fn = function(funcs.slow_pid).to(own_cluster)
    ref = fn.remote(2.5)
    own_cluster.keep_warm(autostop_mins=0.5 * SECOND)
    time.sleep(2.0)
    assert local_daemon.health(own_cluster.server_port) is not None
    assert isinstance(ref.get(), int)
    _stops_within(own_cluster, 10)


def test_a_stream_of_logs_keeps_the_daemon_up(own_cluster, capfd):
    from runhouse import function

    fn = function(funcs.sleep_loop).to(own_cluster)
    own_cluster.keep_warm(autostop_mins=0.5 * SECOND)
    assert fn(2.5, stream_logs=True) == "finished"
    assert local_daemon.health(own_cluster.server_port) is not None


def test_calls_reset_the_idle_time(own_cluster):
    own_cluster.keep_warm(autostop_mins=1.5 * SECOND)
    stop = threading.Event()

    def keep_calling() -> None:
        while not stop.is_set():
            own_cluster.keys()
            time.sleep(0.3)

    caller = threading.Thread(target=keep_calling)
    caller.start()
    time.sleep(3.5)
    assert local_daemon.health(own_cluster.server_port) is not None
    stop.set()
    caller.join()
    _stops_within(own_cluster, 10)


def test_keep_warm_turns_autostop_off_and_survives_a_restart(own_cluster):
    own_cluster.keep_warm(autostop_mins=1 * SECOND)
    own_cluster.keep_warm()
    assert own_cluster.status()["autostop"]["minutes"] is None
    own_cluster.restart_server()
    time.sleep(2.0)
    assert local_daemon.health(own_cluster.server_port) is not None
    own_cluster.keep_warm(autostop_mins=1 * SECOND)
    own_cluster.restart_server()  # the setting is kept: the restarted daemon stops when idle
    _stops_within(own_cluster, 10)


@pytest.mark.parametrize("minutes", [True, "5", float("nan"), float("inf")])
def test_bad_autostop_values_are_refused(own_cluster, minutes):
    with pytest.raises((TypeError, BadRequestError)):
        own_cluster.keep_warm(autostop_mins=minutes)
    assert own_cluster.status()["autostop"]["minutes"] is None
