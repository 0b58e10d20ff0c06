"""A local start on the port of an instance that was killed outright (issue 34 item 4): its HAProxy
ends with its manager; one left over anyway is stopped, and only that one; the instance's closed
connections do not count as the port being in use. Real processes stand in for HAProxy: an
interpreter started under the name `haproxy` with the instance's state directory in its command
line, once with no HAProxy manager above it and once below a process named as Ray names one."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from services import runtime

SLEEPER = "import time; time.sleep(60)"


def fake_haproxy(tmp_path: Path, port: int) -> list[str]:
    name = tmp_path / "haproxy"
    name.symlink_to(sys.executable)
    return [str(name), "-c", SLEEPER, "-f", f"{runtime.haproxy_state_dir(port)}/node/haproxy.cfg"]


def test_a_dead_instances_haproxy_is_stopped_and_a_live_ones_is_left(tmp_path):
    port = runtime.free_ports(1)[0]
    orphan = subprocess.Popen(fake_haproxy(tmp_path, port))  # its parent: this test, no HAProxy manager
    (tmp_path / "live").mkdir()
    spawn = f"import subprocess, time; subprocess.Popen({fake_haproxy(tmp_path / 'live', port)!r}); time.sleep(60)"
    manager = subprocess.Popen(["bash", "-c", f'exec -a "ray::HAProxyManager" {sys.executable} -c "{spawn}"'])
    time.sleep(1.5)
    try:
        stopped = runtime.stop_left_over_haproxy(port)
        assert stopped == [orphan.pid]
        assert orphan.wait(10) != 0  # ended by the signal
        assert manager.poll() is None and runtime.stop_left_over_haproxy(port) == []
    finally:
        for process in (orphan, manager):
            process.kill()
        subprocess.run(["pkill", "-f", f"slmserve-{port}/node"], check=False)


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_what_the_wrapper_execs_ends_with_the_process_that_started_it():
    """HAProxy's manager killed outright (SIGKILL, nothing runs after it): HAProxy, which the wrapper
    armed with the parent-death signal before exec, ends too."""
    child = "from services.haproxy.wrapper import end_with_parent; end_with_parent(); import time; time.sleep(60)"
    starts = f"import subprocess, sys, time; print(subprocess.Popen([sys.executable, '-c', {child!r}]).pid, flush=True)"
    parent = subprocess.Popen(
        [sys.executable, "-c", f"{starts}; time.sleep(60)"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parents[2],
    )
    assert parent.stdout is not None
    pid = int(parent.stdout.readline())
    time.sleep(1)
    assert _alive(pid)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 5
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid), "the child outlived its parent"


def test_a_port_whose_last_connections_are_closing_is_free_but_a_listened_one_is_not():
    """A server that closed its side first leaves TIME_WAIT on its port for a minute; HAProxy binds
    through it (SO_REUSEADDR), and so must the check before a start."""
    port = runtime.free_ports(1)[0]
    with socket.create_server(("127.0.0.1", port)) as listener:
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the server's side closes first: TIME_WAIT on the server's port
        time.sleep(0.1)
        client.close()
        assert not runtime._bindable(port, ("127.0.0.1",))  # the listener is still there
    assert runtime._bindable(port, ("127.0.0.1",))
