"""Start long-running processes and stop exactly them, by process id (Linux ``/proc``).

Every process is started in its own session (``start_new_session``), so it leads a process
group and a session. Flower's processes start helpers of their own: the SuperLink starts
``flower-superexec`` in *another* new session, which starts ``flwr-serverapp``; a SuperNode
starts ``flower-superexec`` and a ``flwr-clientapp`` per message. :func:`family` therefore
follows parent links *and* session ids, so a helper that was re-parented to init when its
parent died is still found. Each process is identified by its pid and its start time (field
22 of ``/proc/PID/stat``), so a recycled pid is never signalled.

:func:`stop` sends SIGTERM to the whole family, waits, then SIGKILLs what is left, and
returns what survived (an empty list when everything is gone). The pid file
(:func:`write_pid_file`) lets another process (``nebula deploy down``) do the same later.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class Started:
    """A process this module started."""

    name: str
    pid: int
    start: int  # start time in clock ticks since boot: (pid, start) names one process for ever
    log: str = ""
    popen: subprocess.Popen | None = field(default=None, repr=False, compare=False)

    def alive(self) -> bool:
        if self.popen is not None and self.popen.poll() is not None:
            return False  # reaped: our own child has exited
        return is_running(self.pid, self.start)

    def returncode(self) -> int | None:
        return None if self.popen is None else self.popen.poll()


@dataclass(frozen=True)
class ProcInfo:
    pid: int
    ppid: int
    sid: int
    start: int
    state: str  # one letter: R, S, Z ...


def read_proc(pid: int) -> ProcInfo | None:
    """What ``/proc/PID/stat`` says, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # "pid (comm) state ppid pgrp session ... starttime(22)"; comm may hold spaces and parentheses.
    rest = raw[raw.rindex(")") + 2 :].split()
    return ProcInfo(pid=pid, ppid=int(rest[1]), sid=int(rest[3]), start=int(rest[19]), state=rest[0])


def is_running(pid: int, start: int) -> bool:
    """True if process ``pid`` still is the one that started at ``start`` and is not a zombie."""
    info = read_proc(pid)
    return info is not None and info.start == start and info.state not in ("Z", "X")


def _table() -> dict[int, ProcInfo]:
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            info = read_proc(int(entry))
            if info is not None:
                table[info.pid] = info
    return table


def family(roots: Iterable[Started]) -> list[ProcInfo]:
    """The live roots, their descendants, and every process in a session one of them leads."""
    table = _table()
    members = {r.pid for r in roots if r.pid in table and table[r.pid].start == r.start}
    sessions: set[int] = set(members)  # roots were started with start_new_session: sid == pid
    grew = True
    while grew:
        grew = False
        for info in table.values():
            if info.pid in members:
                continue
            if info.ppid in members or info.sid in sessions:
                members.add(info.pid)
                grew = True
                if info.sid == info.pid:  # a session leader of its own (Flower's superexec)
                    sessions.add(info.pid)
    return [table[p] for p in sorted(members) if table[p].state not in ("Z", "X")]


def spawn(
    name: str, argv: Sequence[str], *, env: Mapping[str, str], log_path: Path, cwd: Path | None = None
) -> Started:
    """Start ``argv`` in a new session, stdout and stderr appended to ``log_path``."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=str(cwd) if cwd else None,
            start_new_session=True,
        )
    info = read_proc(popen.pid)
    start = info.start if info is not None else -1
    return Started(name=name, pid=popen.pid, start=start, log=str(log_path), popen=popen)


def send_signal(infos: Iterable[ProcInfo], sig: int) -> None:
    for info in infos:
        if is_running(info.pid, info.start):  # re-checked just before: never a recycled pid
            try:
                os.kill(info.pid, sig)
            except (ProcessLookupError, PermissionError):
                pass


def stop(processes: Sequence[Started], *, grace: float = 10.0, kill_wait: float = 5.0) -> list[ProcInfo]:
    """SIGTERM every process of the family, SIGKILL what is left after ``grace`` s; the survivors.

    Children are signalled before their parents' wait ends; our own children are reaped.
    """
    members = family(processes)
    seen = {(m.pid, m.start): m for m in members}
    send_signal(members, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        for p in processes:
            p.alive()  # reaps our own children
        for m in family(processes):  # helpers started while stopping
            seen.setdefault((m.pid, m.start), m)
        if not any(is_running(m.pid, m.start) for m in seen.values()):
            return []
        time.sleep(0.2)
    for m in family(processes):
        seen.setdefault((m.pid, m.start), m)
    send_signal(seen.values(), signal.SIGKILL)
    deadline = time.monotonic() + kill_wait
    while time.monotonic() < deadline:
        for p in processes:
            p.alive()
        left = [m for m in seen.values() if is_running(m.pid, m.start)]
        if not left:
            return []
        time.sleep(0.2)
    return left


def write_pid_file(path: Path, processes: Sequence[Started]) -> None:
    """JSON list of ``{name, pid, start, log}``, replaced atomically."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(
        json.dumps([{"name": p.name, "pid": p.pid, "start": p.start, "log": p.log} for p in processes], indent=1)
    )
    tmp.replace(path)


def read_pid_file(path: Path) -> list[Started]:
    """The processes a pid file names (whether or not they still run)."""
    return [Started(**row) for row in json.loads(path.read_text())]
