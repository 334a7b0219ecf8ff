"""The output's lease (job/commit/lease.py): which holders are provably gone (taken over at once), which may be
alive (waited for until the lease goes stale, refused if renewed meanwhile)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from ned_ray.errors import LeaseHeldError
from ned_ray.job.commit.lease import Lease, takeover_reason, this_process
from ned_ray.output.layout import LEASE
from ned_ray.storage import filesystem


def _holder(**process) -> dict:
    """A lease as a job on this machine would write it, its process replaced by ``process`` fields."""
    holder = {**this_process(), **process}
    return {"token": "other", "host": holder["host"], "pid": holder["pid"], "ttl": 120, "renewed": time.time(),
            "executor": "local", "process": holder}


def _dead_process() -> tuple[int, float]:
    """(pid, start time) of a process that ran and exited (reaped)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    started = psutil.Process(child.pid).create_time()
    child.wait()
    return child.pid, started


def test_a_holder_on_this_machine_whose_process_is_gone_is_taken_over_at_once():
    pid, started = _dead_process()
    assert "is gone" in takeover_reason(_holder(pid=pid, started=started))
    me = this_process()
    assert "is gone" in takeover_reason(_holder(pid=me["pid"], started=me["started"] - 500))  # pid reused by another
    assert takeover_reason(_holder()) is None  # this very process: alive
    assert takeover_reason(_holder(boot="another-boot", pid=pid, started=started)) == (
        f"its host {me['host']} has restarted since" if me["machine"] else None)


def test_a_holder_that_may_be_alive_is_not_taken_over():
    pid, started = _dead_process()
    assert takeover_reason(_holder(host="elsewhere", pid=pid, started=started)) is None  # another host
    assert takeover_reason(_holder(machine="another-machine", pid=pid, started=started)) is None
    assert takeover_reason(_holder(pid_ns="pid:[1]", pid=pid, started=started)) is None  # another container
    lease = _holder(pid=pid, started=started)
    assert takeover_reason({**lease, "executor": "ray"}) is None  # its actors may run on a Ray cluster
    raylet, raylet_started = _dead_process()
    gone = {**lease, "executor": "ray", "ray_raylets": [[raylet, raylet_started]]}
    assert "with its Ray instance" in takeover_reason(gone)  # it had started Ray itself: all gone with it
    alive = {**lease, "executor": "ray", "ray_raylets": [[os.getpid(), psutil.Process().create_time()]]}
    assert takeover_reason(alive) is None
    assert "not renewed for" in takeover_reason({**lease, "host": "elsewhere", "renewed": time.time() - 500})
    assert takeover_reason({}) == "its lease file is unreadable"


def _write(root: Path, lease: dict) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "tmp-lease").write_text(json.dumps(lease))
    os.replace(root / "tmp-lease", root / LEASE)  # as a job writes it: whole or not at all


def test_acquire_takes_a_dead_holders_lease_at_once_and_says_so(tmp_path):
    pid, started = _dead_process()
    _write(tmp_path / "out", _holder(pid=pid, started=started))
    fs, root = filesystem(str(tmp_path / "out"))
    lines: list[str] = []
    begun = time.monotonic()
    lease = Lease(fs, root, ttl=120).acquire(notify=lines.append)
    try:
        assert time.monotonic() - begun < 5 and lease.took_over and len(lines) == 1
        assert f"took over its lease from the job that held it (host {this_process()['host']}, pid {pid})" in lines[0]
        assert json.loads((tmp_path / "out" / LEASE).read_text())["token"] == lease.token
    finally:
        lease.release()
    assert not list((tmp_path / "out").iterdir())


def test_acquire_waits_for_a_silent_holder_then_takes_over_and_refuses_a_renewing_one(tmp_path):
    fs, root = filesystem(str(tmp_path / "out"))
    _write(tmp_path / "out", {**_holder(host="elsewhere"), "ttl": 2})  # may be alive; renews no more
    lines: list[str] = []
    begun = time.monotonic()
    lease = Lease(fs, root, ttl=2).acquire(notify=lines.append)
    lease.release()
    assert 1.5 < time.monotonic() - begun < 10 and "it may be alive: waiting up to 2s" in lines[0]
    assert "not renewed for" in lines[1]

    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.2):
            _write(tmp_path / "out", {**_holder(host="elsewhere"), "ttl": 2})

    _write(tmp_path / "out", {**_holder(host="elsewhere"), "ttl": 2})
    thread = threading.Thread(target=renew, daemon=True)
    thread.start()
    try:
        with pytest.raises(LeaseHeldError, match="host elsewhere.*it is alive .it renewed the lease while this job waited"):
            Lease(fs, root, ttl=2).acquire()
    finally:
        stop.set()
        thread.join()
    forced = Lease(fs, root, ttl=2).acquire(force=True, notify=lines.append)  # the user says it is dead
    forced.release()
    assert lines[-1].endswith(": --force")


def test_lease_records_who_holds_it(tmp_path):
    fs, root = filesystem(str(tmp_path / "out"))
    lease = Lease(fs, root, ttl=60, describe={"executor": "local"}).acquire()
    try:
        record = json.loads((tmp_path / "out" / LEASE).read_text())
        me = psutil.Process()
        assert record["process"]["pid"] == os.getpid() and abs(record["process"]["started"] - me.create_time()) < 1
        assert record["process"]["host"] and record["process"]["boot"] and record["executor"] == "local"
    finally:
        lease.release()
