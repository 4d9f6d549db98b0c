"""nebula.deploy.processes: stop exactly what was started, helpers in other sessions included, and nothing else."""

import os
import signal
import subprocess
import sys
import time

from nebula.deploy.processes import family, is_running, read_pid_file, read_proc, spawn, stop, write_pid_file

# A parent that starts a helper in a new session (as flower-superlink starts flower-superexec),
# prints the helper's pid, and ignores SIGTERM when asked to (so SIGKILL must finish it).
PARENT = """
import signal, subprocess, sys, time
if sys.argv[1] == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
print(helper.pid, flush=True)
time.sleep(300)
"""


def _start(tmp_path, name, mode="polite"):
    proc = spawn(name, [sys.executable, "-c", PARENT, mode], env=dict(os.environ), log_path=tmp_path / f"{name}.log")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        text = (tmp_path / f"{name}.log").read_text().strip()
        if text:
            return proc, int(text.splitlines()[0])
        time.sleep(0.05)
    raise AssertionError("helper pid never printed")


def test_family_follows_helpers_in_other_sessions_and_stop_ends_them(tmp_path):
    proc, helper = _start(tmp_path, "parent")
    assert read_proc(helper).sid == helper != proc.pid  # the helper leads a session of its own
    assert {m.pid for m in family([proc])} == {proc.pid, helper}
    helper_start = read_proc(helper).start
    assert stop([proc], grace=5) == []
    assert not proc.alive() and not is_running(helper, helper_start)


def test_sigterm_ignored_means_sigkill(tmp_path):
    proc, helper = _start(tmp_path, "stubborn", "stubborn")
    t0 = time.monotonic()
    assert stop([proc], grace=1, kill_wait=5) == []
    assert time.monotonic() - t0 >= 1  # it had its grace period first
    assert proc.returncode() == -signal.SIGKILL


def test_stop_from_a_pid_file_and_a_recycled_pid_is_left_alone(tmp_path):
    proc, helper = _start(tmp_path, "parent")
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        write_pid_file(tmp_path / "pids.json", [proc])
        rows = read_pid_file(tmp_path / "pids.json")
        assert [(r.name, r.pid, r.start) for r in rows] == [("parent", proc.pid, proc.start)]
        # The same pid with another start time is another process: never signalled.
        impostor = read_pid_file(tmp_path / "pids.json")[0]
        impostor.pid, impostor.start = bystander.pid, read_proc(bystander.pid).start + 1
        assert family([impostor]) == [] and stop([impostor], grace=0.5) == []
        assert bystander.poll() is None
        helper_start = read_proc(helper).start
        assert stop(rows, grace=5) == []  # no Popen: another process ("nebula deploy down")
        proc.popen.wait(timeout=5)
        assert not is_running(helper, helper_start)
    finally:
        bystander.kill()
        bystander.wait()
        stop([proc], grace=1)
