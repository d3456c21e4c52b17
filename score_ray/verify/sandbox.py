"""Run untrusted Python code in a throw-away, resource-limited sandbox, and test it from outside.

`run_tests(candidate, tests, ...)` is how score-ray scores model-written code: the candidate
runs in one sandboxed process, the (trusted) tests in another, and the tests reach the
candidate's functions only through proxies that carry plain data (see `forkserver`). A pass
needs every test to pass in the test process. `run_untrusted(program, ...)` runs a program
with no tests; it passes iff the program runs to its end without raising.

Each process that uses the sandbox starts one fork server (`forkserver.py`, in an interpreter
whose standard library the sandbox uid can read) and asks it for one runner per program; the
runner sets up, per program and as far as this host allows:

1. mount namespace: the host root re-mounted read-only; private tmpfs mounts (size- and
   inode-limited) on /tmp, /var/tmp, /dev/shm and the work directory /tmp/sandbox
   (also $HOME); all of it ends with the run, so nothing written reaches the host;
2. PID namespace with a fresh /proc: no host process is visible, every process of the run
   dies with it; network namespace: no interface but a downed loopback; IPC namespace:
   no System V or POSIX IPC object outlives the run;
3. two unprivileged uids: `nobody` for the candidate and an unused uid for the tests, so
   the candidate cannot signal, trace or read the test process;
4. resource limits (CPU seconds, address space, file size, processes, open files), and a
   wall-clock timeout after which the runner's whole process group is killed.

The verdict never reads the program's output: the test process writes a per-run nonce to a
pipe only it holds after every test passed; the runner reports its exit status. Printing
"all tests passed", `sys.exit(0)`, `os._exit(0)` or crashing all score 0, and since the tests
never see a candidate's object, a result whose `__eq__` always says True scores 0 too.

Isolation is detected once per process (`isolation()`) and degrades gracefully: as root all
of the above; not root, a user namespace gives the namespaces and the private filesystem
but no second uid (capabilities are dropped instead); where no namespace can be created, only
the uid drop (as root) and the limits remain. `SandboxResult.isolation` names what was in
force, e.g. ``mntns+pidns+netns+ipcns+proc+uid:65534`` (docs/sandbox.md says what each part
guarantees).
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import hmac
import json
import os
import pwd
import secrets
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "Isolation",
    "SandboxLimits",
    "SandboxResult",
    "isolation",
    "run_tests",
    "run_untrusted",
]


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program resource limits (setrlimit on both processes, tmpfs sizes)."""

    cpu_s: int = 5
    """RLIMIT_CPU: CPU seconds (SIGXCPU at the soft limit, SIGKILL one second later)."""
    memory_mb: int = 512
    """RLIMIT_AS: address space; allocations beyond it raise MemoryError."""
    file_size_mb: int = 16
    """RLIMIT_FSIZE: largest file the program may write (stdout and stderr included)."""
    max_processes: int = 1
    """RLIMIT_NPROC for the sandbox uid. It counts every process and thread of that uid on the
    host (other concurrent sandboxes included), so 1 means: no new processes or threads."""
    max_open_files: int = 64
    """RLIMIT_NOFILE."""
    tmpfs_mb: int = 16
    """Size of each private tmpfs (work directory, /tmp, /var/tmp, /dev/shm)."""
    tmpfs_inodes: int = 1024
    """Files and directories each private tmpfs may hold."""
    output_bytes: int = 4096
    """How much of the program's combined stdout/stderr is kept in the result (debugging)."""


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    """Every test passed in the test process (nonce received), which exited 0, in time."""
    timed_out: bool
    """The wall-clock timeout fired and the run's process group was killed."""
    returncode: int | None
    """Exit status of the test process (negative: killed by that signal); None if unknown."""
    output: str
    """The first `limits.output_bytes` of stdout+stderr of both processes. Never used for the
    verdict."""
    wall_s: float
    """Seconds from the request to the verdict."""
    cpu_s: float | None
    """CPU seconds of the run's processes (runner, tests, candidate); None if it was killed.
    Forking the runner is charged to the fork server (`server_cpu_seconds`)."""
    isolation: str
    """The isolation in force, e.g. "mntns+pidns+netns+ipcns+proc+uid:65534"."""


@dataclass(frozen=True)
class Isolation:
    """How sandbox processes are started on this host (detected once by `isolation()`)."""

    prefix: tuple[str, ...]
    """Command prefix of the fork server (`unshare --user --map-root-user` when not root)."""
    python: str
    """Interpreter of the fork server, and so of every sandboxed process."""
    namespaces: tuple[str, ...]
    """New namespaces per program: some of "mnt", "pid", "net", "ipc"."""
    fresh_proc: bool
    """A /proc of the program's own PID namespace is mounted (needs "mnt" and "pid")."""
    uid: int
    """uid (and gid) of the candidate; -1 keeps the caller's."""
    gid: int
    test_uid: int
    """uid (and gid) of the test process; -1 keeps the caller's."""
    test_gid: int
    name: str
    """Parts in force: userns, mntns, pidns, netns, ipcns, proc, uid:N or uid:same."""

    @property
    def private_filesystem(self) -> bool:
        return "mnt" in self.namespaces


# Only what an interpreter needs; nothing of the caller's environment (tokens, keys) leaks.
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
_FORKSERVER = Path(__file__).with_name("forkserver.py")
OWNER_VARIABLE = "SCORE_RAY_SANDBOX_OWNER"
_ALL_NAMESPACES = ("mnt", "pid", "net", "ipc")
_PROBE_CANDIDATE = (
    "import colorsys, json, textwrap\n"  # not preloaded: the stdlib must be readable
    "open('probe.txt', 'w').write('ok')\n"
    "def probe(x):\n"
    "    return {'x': (x, [1.5, None, 'a'])}\n"
)
_PROBE_TESTS = "assert probe(2) == {'x': (2, [1.5, None, 'a'])}\n"
_PROBE_TIMEOUT_S = 20.0
_SETUP_FAILED = 120  # forkserver.RUNNER_SETUP_FAILED: namespaces, mounts or uids failed
_KILL_GRACE_S = 1.0


def run_tests(
    candidate: str,
    tests: str,
    timeout_s: float,
    limits: SandboxLimits | None = None,
    *,
    setup: str = "",
    calls: tuple[str, ...] | None = None,
) -> SandboxResult:
    """Run `candidate` in the sandbox and `tests` against it from a separate test process.

    `setup` runs first in the test process (trusted helpers, imports); then each name in
    `calls` (default: every name the tests read that the candidate defines and that neither
    `setup` nor the builtins define) becomes a proxy for the candidate's function of that
    name. Passed iff the candidate's code ran to its end and the tests then ran to theirs.
    Never raises because of what `candidate` does; raises OSError if the host cannot start
    or set up the sandbox's processes.
    """
    return _run(candidate, timeout_s, limits or SandboxLimits(), isolation(), tests, setup, calls)


def run_untrusted(
    program: str, timeout_s: float, limits: SandboxLimits | None = None
) -> SandboxResult:
    """Execute `program` in the sandbox; passed iff it ran to its end without raising.

    The program's own asserts run in its own process, so they prove nothing against a
    program that lies; score with `run_tests`.
    """
    return run_tests(program, "", timeout_s, limits)


# --- detection ----------------------------------------------------------------------------

_detect_lock = threading.Lock()


def isolation() -> Isolation:
    """The strongest isolation this host supports, probed once per process."""
    with _detect_lock:  # probing spawns processes; do it once even with concurrent callers
        return _detect()


@functools.cache
def _detect() -> Isolation:
    for iso in _attempts():
        if _probe(iso):
            return iso
    raise OSError("sandbox: no Python interpreter can run candidate programs on this host")


def _attempts() -> list[Isolation]:
    """Every way to run the sandbox here, strongest first."""
    root = os.geteuid() == 0
    uid, gid = _nobody() if root else (-1, -1)
    test_uid, test_gid = _unused_id(uid) if root else (-1, -1)
    prefixes: list[tuple[str, ...]] = [()]
    unshare = shutil.which("unshare")
    if not root and unshare:  # a user namespace lets an unprivileged caller create the rest
        prefixes.insert(0, (unshare, "--user", "--map-root-user"))
    attempts = []
    for prefix in prefixes:
        for python in _python_candidates():
            for namespaces, proc in _namespace_levels(root or bool(prefix)):
                attempts.append(
                    Isolation(
                        prefix=prefix,
                        python=python,
                        namespaces=namespaces,
                        fresh_proc=proc,
                        uid=uid,
                        gid=gid,
                        test_uid=test_uid,
                        test_gid=test_gid,
                        name=_name(prefix, namespaces, proc, uid),
                    )
                )
    return attempts


def _namespace_levels(can_unshare: bool) -> list[tuple[tuple[str, ...], bool]]:
    """(namespaces, fresh /proc) to try: all with a fresh /proc, all, none."""
    levels = [(_ALL_NAMESPACES, True), (_ALL_NAMESPACES, False)] if can_unshare else []
    return [*levels, ((), False)]


def _name(prefix: tuple[str, ...], namespaces: tuple[str, ...], proc: bool, uid: int) -> str:
    parts = ["userns"] if prefix else []
    parts += [f"{name}ns" for name in namespaces]
    parts += ["proc"] if proc else []
    parts.append(f"uid:{uid}" if uid >= 0 else "uid:same")
    return "+".join(parts)


def _nobody() -> tuple[int, int]:
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


def _unused_id(avoid: int) -> tuple[int, int]:
    """A uid/gid no account uses (the test process's), below nobody's."""
    used = {entry.pw_uid for entry in pwd.getpwall()} | {avoid}
    uid = next(candidate for candidate in range(65533, 1000, -1) if candidate not in used)
    return uid, uid


def _python_candidates() -> list[str]:
    """Our own interpreter first, then system ones (readable by `nobody` when ours is not)."""
    names = [sys.executable, getattr(sys, "_base_executable", ""), "/usr/bin/python3"]
    names.append("/usr/local/bin/python3")
    seen: list[str] = []
    for name in names:
        path = os.path.realpath(name) if name else ""
        if path and os.access(path, os.X_OK) and path not in seen:
            seen.append(path)
    return seen


def _probe(iso: Isolation) -> bool:
    try:
        return _run(_PROBE_CANDIDATE, _PROBE_TIMEOUT_S, SandboxLimits(), iso, _PROBE_TESTS).passed
    except OSError:
        return False


# --- the fork server ----------------------------------------------------------------------


class _ServerGone(Exception):
    """The fork server died; a new one is started and the request retried once."""


class _ForkServer:
    """One `forkserver.py` process; `start` asks it for a runner (thread-safe)."""

    def __init__(self, prefix: tuple[str, ...], python: str) -> None:
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.process = subprocess.Popen(
                [*prefix, python, "-I", "-S", str(_FORKSERVER), str(theirs.fileno())],
                # The owner's pid tags every sandboxed process (/proc/PID/environ), so an
                # operator, or a test on a shared machine, can tell whose they are.
                env={**_ENV, OWNER_VARIABLE: str(os.getpid())},
                cwd="/",
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
            )
        finally:
            theirs.close()
        self.socket = mine
        self.lock = threading.Lock()

    def start(self, spec: dict, fds: list[int]) -> tuple[int, int]:
        """(pid, pidfd) of a new runner for `spec`, which gets `fds`."""
        with self.lock:
            try:
                socket.send_fds(self.socket, [json.dumps(spec).encode()], fds)
                reply, pidfds, _, _ = socket.recv_fds(self.socket, 64, 1)
            except OSError as error:
                raise _ServerGone(str(error)) from None
        if len(reply) != 4 or len(pidfds) != 1:
            for fd in pidfds:
                os.close(fd)
            raise _ServerGone("no runner")
        return struct.unpack("i", reply)[0], pidfds[0]

    def close(self) -> None:
        self.socket.close()  # the server sees EOF and exits; its runners die with it
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)

    def cpu_seconds(self) -> float:
        """CPU time of the server itself: mostly forking runners (for benchmarks)."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


_servers: dict[tuple[tuple[str, ...], str], _ForkServer] = {}
_servers_lock = threading.Lock()


def _server(iso: Isolation, replace: _ForkServer | None = None) -> _ForkServer:
    key = (iso.prefix, iso.python)
    with _servers_lock:
        server = _servers.get(key)
        if server is None or server is replace:
            if server is not None:
                server.close()
            server = _servers[key] = _ForkServer(iso.prefix, iso.python)
        return server


def _close_servers() -> None:
    with _servers_lock:
        for server in _servers.values():
            server.close()
        _servers.clear()


def _forget_servers() -> None:
    """In a forked child: the parent's servers are the parent's (close our copies only), and
    a lock another thread of the parent held at the fork would stay held: new ones."""
    global _servers_lock, _detect_lock
    for server in _servers.values():
        server.socket.close()
    _servers.clear()
    _servers_lock, _detect_lock = threading.Lock(), threading.Lock()


atexit.register(_close_servers)
os.register_at_fork(after_in_child=_forget_servers)


def server_cpu_seconds() -> float:
    """CPU seconds used so far by this process's fork servers themselves (not their runs:
    `SandboxResult.cpu_s` has those)."""
    with _servers_lock:
        return sum(server.cpu_seconds() for server in _servers.values())


# --- one run ------------------------------------------------------------------------------


def _run(
    candidate: str,
    timeout_s: float,
    limits: SandboxLimits,
    iso: Isolation,
    tests: str = "",
    setup: str = "",
    calls: tuple[str, ...] | None = None,
) -> SandboxResult:
    """One run of `candidate` against `tests` under `iso` (see `run_tests`)."""
    started = time.perf_counter()
    nonce = secrets.token_hex(16)
    test_spec = {
        "setup": setup,
        "tests": tests,
        "calls": list(calls) if calls is not None else None,
        "nonce": nonce,
    }
    with contextlib.ExitStack() as stack:
        output = stack.enter_context(tempfile.TemporaryFile())  # anonymous: nothing to swap
        workdir = None
        if not iso.private_filesystem:  # a host directory, removed afterwards
            workdir = stack.enter_context(
                tempfile.TemporaryDirectory(prefix="score-ray-sbx-", ignore_cleanup_errors=True)
            )
            if iso.uid >= 0:
                os.chown(workdir, iso.uid, iso.gid)  # writable by the candidate, nothing else
        # surrogatepass: a lone surrogate becomes invalid UTF-8, which the candidate's compile
        # rejects (a failure) instead of crashing the verifier here.
        code = _memfd("code", candidate.encode("utf-8", "surrogatepass"))
        spec = _memfd("tests", json.dumps(test_spec).encode())
        result_r, result_w = os.pipe()
        stack.callback(os.close, result_r)
        try:
            request = _request(iso, limits, workdir)
            pidfd = _start(iso, request, [code, spec, result_w, output.fileno()])
        finally:
            for fd in (code, spec, result_w):  # the runner has its own copies now
                os.close(fd)
        stack.callback(os.close, pidfd)
        timed_out = _wait_or_kill(pidfd, timeout_s)
        report = _read_available(result_r)
        output.seek(0)
        head = output.read(max(0, limits.output_bytes)).decode("utf-8", "replace")
    marker, status, cpu_s = _parse_report(report)
    if status == _SETUP_FAILED:  # the host's doing, not the candidate's: say so, loudly
        raise OSError(f"sandbox setup failed ({iso.name}): {head.strip()[:500]}")
    passed = not timed_out and status == 0 and hmac.compare_digest(marker, b"P" + nonce.encode())
    return SandboxResult(
        passed=passed,
        timed_out=timed_out,
        returncode=status,
        output=head,
        wall_s=time.perf_counter() - started,
        cpu_s=cpu_s,
        isolation=iso.name,
    )


def _request(iso: Isolation, limits: SandboxLimits, workdir: str | None) -> dict:
    mib = 1024 * 1024
    return {
        "namespaces": list(iso.namespaces),
        "fresh_proc": iso.fresh_proc,
        "userns": bool(iso.prefix),
        "uid": iso.uid,
        "gid": iso.gid,
        "test_uid": iso.test_uid,
        "test_gid": iso.test_gid,
        "workdir": workdir,
        "tmpfs_mb": max(1, limits.tmpfs_mb),
        "tmpfs_inodes": max(16, limits.tmpfs_inodes),
        "limits": [
            max(1, int(limits.cpu_s)),
            limits.memory_mb * mib,
            limits.file_size_mb * mib,
            limits.max_processes,
            limits.max_open_files,
        ],
    }


def _start(iso: Isolation, request: dict, fds: list[int]) -> int:
    """Ask the fork server for a runner; a dead server is replaced once."""
    server = _server(iso)
    try:
        return server.start(request, fds)[1]
    except _ServerGone:
        return _server(iso, replace=server).start(request, fds)[1]


def _memfd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding `data`, positioned at its start."""
    fd = os.memfd_create(f"score-ray-{name}", os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _wait_or_kill(pidfd: int, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for the runner, else kill it; True if it timed out. A pidfd
    names the runner even after it exits: no pid can be reused under us. The candidate dies
    with it (parent-death signal, PID namespace); the fork server then kills the rest of the
    runner's process group before reaping it."""
    if _exited(pidfd, timeout_s):
        return False
    with contextlib.suppress(ProcessLookupError):
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
    _exited(pidfd, _KILL_GRACE_S)
    return True


def _exited(pidfd: int, timeout_s: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(max(0.0, timeout_s) * 1000))


def _read_available(fd: int) -> bytes:
    """What is in the pipe now. Non-blocking: a leftover writer must not stall the verdict."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 256)
    except BlockingIOError:
        return b""


_STATUS = struct.Struct(">id")  # the runner's record: T's exit status, the run's CPU seconds


def _parse_report(report: bytes) -> tuple[bytes, int | None, float | None]:
    """(the test process's pass marker or b"", T's exit status, the run's CPU seconds); the
    runner writes its record ("S" + _STATUS) last, so it is at the end when present."""
    size = 1 + _STATUS.size
    if len(report) < size or report[-size : -size + 1] != b"S":
        return (report if report.startswith(b"P") else b""), None, None
    status, cpu_s = _STATUS.unpack(report[-_STATUS.size :])
    marker = report[:-size]
    return (marker if marker.startswith(b"P") else b""), status, cpu_s
