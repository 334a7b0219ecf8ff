"""The output's lease (commit invariant 6): one job writes an output at a time.

``OUT/_lease.json`` names the job that writes the output (its process, and its Ray job when it runs
on Ray Data) and is renewed every ttl/4 seconds. A job that finds the lease held takes it over at once
when its holder is **provably gone**:

* the holder ran on this machine (same host name, machine id and PID namespace) and its process is
  not alive, or is another process under the same pid (its start time differs), or the machine has
  rebooted since (another boot id);
  a holder on Ray Data counts as gone only if it had started its Ray instance itself (its raylet,
  a child process, died with it, and the actors with their raylet): actors on a shared Ray cluster
  outlive their driver for a while, and only Ray can say when they are gone:
* its Ray job is dead and none of its actors alive, on the Ray cluster this process joined.

Any other holder may be alive (another host, a Ray cluster this process cannot see): the job waits
until the lease is released, or goes stale (not renewed for the holder's ttl), and takes it over
then; if the holder renews it meanwhile, it is alive, and the job is refused in one line.
``force`` takes the lease over at once. Every acquisition and renewal reads the lease back: a job
that does not find its own token there has lost it and stops (the check for stores that ignore
write preconditions, such as some GCS emulators).
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from typing import Any, Callable

from ...errors import LeaseHeldError, LeaseLostError
from ...output.layout import LEASE
from ...storage import is_local

__all__ = ["Lease", "LeaseHeldError", "LeaseLostError", "LEASE", "LEASE_TTL", "this_process", "takeover_reason",
           "local_ray_processes", "describe_holder"]

LEASE_TTL = 120.0  # seconds after its last renewal a lease is stale
START_TOLERANCE = 1.0  # seconds: two start times of one pid closer than this are the same process

log = logging.getLogger("ned_ray")


# -- who holds it ----------------------------------------------------------------------------------
def _read_first(*paths: str) -> str:
    for path in paths:
        try:
            with open(path) as fh:
                value = fh.read().strip()
            if value:
                return value
        except OSError:
            continue
    return ""


def this_process() -> dict[str, Any]:
    """What identifies this process across machines, reboots and pid reuse: host name, machine id,
    boot id (Linux; else the boot time), PID namespace (Linux), pid and start time."""
    import psutil

    boot = _read_first("/proc/sys/kernel/random/boot_id") or f"{psutil.boot_time():.0f}"
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return {"host": socket.gethostname(), "machine": _read_first("/etc/machine-id", "/var/lib/dbus/machine-id"),
            "boot": boot, "pid_ns": namespace, "pid": os.getpid(), "started": psutil.Process().create_time()}


def local_ray_processes() -> list[list[float]]:
    """[pid, start time] of the raylets this process started (``ray.init()`` without an address):
    when they are gone, so are the actors of that Ray instance."""
    import psutil

    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.name() == "raylet":
                found.append([child.pid, child.create_time()])
        except psutil.Error:
            continue
    return found


def _alive(pid: Any, started: Any) -> bool:
    """Whether the process that had ``pid`` and started at ``started`` still runs (a zombie does not)."""
    import psutil

    try:
        process = psutil.Process(int(pid))
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return abs(process.create_time() - float(started)) < START_TOLERANCE
    except psutil.NoSuchProcess:
        return False
    except (psutil.Error, TypeError, ValueError):
        return True  # cannot tell: it may be alive


def takeover_reason(lease: dict[str, Any], ttl: float = LEASE_TTL) -> str | None:
    """Why the lease's holder is certainly not writing any more (stale, or provably gone), or None
    when it may be alive."""
    if not lease:
        return "its lease file is unreadable"
    age = time.time() - float(lease.get("renewed", 0))
    if age > float(lease.get("ttl", ttl)):
        return f"its lease was not renewed for {age:.0f}s (stale after {float(lease.get('ttl', ttl)):.0f}s)"
    if _ray_job_gone(lease):
        return f"its Ray job {lease.get('ray_job_id')} is dead and none of its actors alive"
    return _process_gone(lease)


def _process_gone(lease: dict[str, Any]) -> str | None:
    """Why the holder's process is certainly gone (it ran here), or None."""
    holder = lease.get("process")
    if not isinstance(holder, dict):
        return None
    me = this_process()
    if (holder.get("host"), holder.get("machine")) != (me["host"], me["machine"]):
        return None  # another machine (or one that cannot be told apart from this one): may be alive
    raylets = lease.get("ray_raylets") or []
    if lease.get("executor") == "ray" and not raylets:
        return None  # its actors run on a Ray cluster: they may outlive their driver
    host, pid = holder.get("host"), holder.get("pid")
    if holder.get("boot") != me["boot"]:
        return f"its host {host} has restarted since" if me["machine"] else None
    if holder.get("pid_ns") != me["pid_ns"]:
        return None  # another container on this host: its pids are not ours to look up
    if _alive(pid, holder.get("started")) or any(_alive(p, s) for p, s in raylets):
        return None
    return f"its process (pid {pid} on {host}) is gone" + (" with its Ray instance" if raylets else "")


def _ray_job_gone(lease: dict[str, Any]) -> bool:
    """The lease's Ray job is dead and none of its actors is alive, on the cluster this process joined.

    Detached actors are left out: Ray Data creates its bookkeeping singletons (stats, autoscaling
    coordinator, location tracker) detached under the first job that uses them, and they outlive it;
    they never write an output's files. Our encoders and writers are never detached.
    """
    if "ray_job_id" not in lease:
        return False
    try:
        import ray

        if not ray.is_initialized() or lease.get("ray_session") != ray.get_runtime_context().get_session_name():
            return False
        from ray._private import state

        jobs = {j["JobID"]: j for j in state.jobs()}
        job = jobs.get(lease.get("ray_job_id"))
        if job is None or not job.get("IsDead"):
            return False
        return not ray_job_actors_alive(lease["ray_job_id"])
    except Exception:  # noqa: BLE001 - unknown means not provably gone
        return False


def ray_job_actors_alive(job_id: str) -> int:
    """How many non-detached actors of a Ray job are not dead (on the cluster this process joined)."""
    from ray._private import state

    return sum(1 for a in state.actors().values()
               if a.get("JobID") == job_id and a.get("State") != "DEAD" and not a.get("IsDetached"))


def describe_holder(lease: dict[str, Any], path: str) -> str:
    age = time.time() - float(lease.get("renewed", 0)) if lease.get("renewed") else float("nan")
    return (f"output '{posixpath.dirname(path)}' is being written by another job (host {lease.get('host', '?')}, "
            f"pid {lease.get('pid', '?')}, Ray job {lease.get('ray_job_id', '-')}), lease renewed {age:.0f}s ago "
            f"(stale after {float(lease.get('ttl', LEASE_TTL)):.0f}s)")


# -- the lease -------------------------------------------------------------------------------------
def _create_exclusive(fs, path: str, data: bytes) -> None:
    """Create ``path`` only if it does not exist (FileExistsError otherwise): exclusive create on local
    disks, ``If-None-Match: *`` on S3, ``ifGenerationMatch=0`` on GCS (stores that ignore the
    precondition are caught by reading the lease back, see :class:`Lease`)."""
    if is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
        with open(path, "xb") as fh:
            fh.write(data)
        return
    fs.pipe_file(path, data, mode="create")


class Lease:
    """The output's lease, ``OUT/_lease.json``: who writes it, renewed every ttl/4 seconds (see the
    module's docstring for when another job's lease is taken over)."""

    def __init__(self, fs, root: str, ttl: float = LEASE_TTL, describe: dict[str, Any] | None = None,
                 label: str | None = None) -> None:
        self.fs, self.root, self.path, self.ttl = fs, root, posixpath.join(root, LEASE), float(ttl)
        self.label = label or root  # the output as the user named it, for messages
        self.token = uuid.uuid4().hex
        process = this_process()
        self.record = {"token": self.token, "host": process["host"], "pid": process["pid"], "ttl": self.ttl,
                       "started": time.time(), "process": process, **(describe or {})}
        self.lost: str | None = None
        self.took_over: str | None = None  # why another job's lease was taken over, if it was
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _data(self) -> bytes:
        return json.dumps({**self.record, "renewed": time.time()}).encode()

    def read(self) -> dict[str, Any] | None:
        try:
            if hasattr(self.fs, "invalidate_cache"):
                self.fs.invalidate_cache(self.path)
            return json.loads(self.fs.cat_file(self.path))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):
            return {}  # unreadable: treated as stale

    def acquire(self, force: bool = False, notify: Callable[[str], None] | None = None,
                poll: float | None = None) -> "Lease":
        """Take the lease: create it, or take over a holder that is gone or stale; wait while a holder
        that may be alive neither renews nor releases it. ``notify`` gets one line when this job
        waits or takes over."""
        notify = notify or (lambda line: None)
        waiting: dict[str, Any] | None = None  # the lease as first seen, while waiting for it to go stale
        begun = time.monotonic()
        while True:
            try:
                _create_exclusive(self.fs, self.path, self._data())
                break
            except FileExistsError:
                pass
            current = self.read()
            if current is None:
                continue  # released just now: create it
            reason = takeover_reason(current, self.ttl) or ("--force" if force else None)
            if reason:
                self._replace(current)
                self.took_over = reason
                holder = f"host {current.get('host', '?')}, pid {current.get('pid', '?')}"
                waited = f" (after waiting {time.monotonic() - begun:.0f}s)" if waiting is not None else ""
                notify(f"output '{self.label}': took over its lease from the job that held it ({holder}): {reason}"
                       + waited)
                break
            # look often enough to see the holder renew (every ttl/4 of its own ttl), at most every 5 s
            holder_ttl = float(current.get("ttl", self.ttl)) if current else self.ttl
            every = poll if poll is not None else max(0.2, min(5.0, self.ttl / 8, holder_ttl / 8))
            if waiting is None:
                waiting = current
                left = float(current.get("ttl", self.ttl)) - (time.time() - float(current.get("renewed", 0)))
                notify(f"{describe_holder(current, self.path)}; it may be alive: waiting up to {left:.0f}s for it to "
                       "release the lease or for the lease to go stale")
            elif (current.get("token"), current.get("renewed")) != (waiting.get("token"), waiting.get("renewed")):
                raise LeaseHeldError(describe_holder(current, self.path) + ": it is alive (it renewed the lease while "
                                     "this job waited); wait for that job or use another --output (--force takes "
                                     "the output over: only if that job is dead and its tasks stopped)") from None
            time.sleep(every)
        if (self.read() or {}).get("token") != self.token:
            holder = self.read() or {}
            raise LeaseHeldError(describe_holder(holder, self.path) + " (it took the lease at the same time)")
        self._thread = threading.Thread(target=self._renew_loop, name="ned-ray-lease", daemon=True)
        self._thread.start()
        return self

    def _tmp(self) -> str:
        return posixpath.join(self.root, f".tmp-{self.token}-{LEASE}")

    def _replace(self, current: dict[str, Any]) -> None:
        data = self._data()
        if is_local(self.fs):
            tmp = self._tmp()
            with open(tmp, "wb") as fh:
                fh.write(data)
            os.replace(tmp, self.path)
        elif "s3" in (self.fs.protocol if isinstance(self.fs.protocol, tuple) else (self.fs.protocol,)):
            etag = self.fs.info(self.path).get("ETag")  # only if nobody replaced it since we read it
            try:
                self.fs.pipe_file(self.path, data, IfMatch=etag)
            except OSError:
                raise LeaseHeldError(describe_holder(self.read() or {}, self.path) + " (taken over just now)") from None
        else:
            self.fs.pipe_file(self.path, data)

    def renew(self) -> None:
        current = self.read() or {}
        if current.get("token") != self.token:
            self.lost = describe_holder(current, self.path) if current else f"{self.path} was deleted"
            return
        self._replace(current)

    def _renew_loop(self) -> None:
        import _thread

        while not self._stop.wait(self.ttl / 4):
            try:
                self.renew()
            except Exception as exc:  # noqa: BLE001 - a failed renewal is retried; the lease goes stale otherwise
                log.warning("could not renew the lease %s: %s", self.path, exc)
            if self.lost:
                _thread.interrupt_main()  # stop the job: another one writes this output now
                return

    def release(self) -> None:
        """Stop renewing and remove the lease (if still ours), and temporary files of lease writes."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if not self.lost and (self.read() or {}).get("token") == self.token:
            self.fs.rm(self.path)
        if is_local(self.fs) and os.path.isdir(self.root):  # renewals killed mid-write (SIGKILL) leave these
            for name in os.listdir(self.root):
                if name.startswith(".tmp-") and name.endswith(f"-{LEASE}"):
                    try:
                        os.remove(os.path.join(self.root, name))
                    except OSError:
                        pass
