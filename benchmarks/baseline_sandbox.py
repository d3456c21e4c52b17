"""Frozen copy of the code sandbox as it was before issue 16 (commit 16c9acc), for benchmarks.

`benchmarks/sandbox_throughput.py` measures it side by side with `score_ray.verify.sandbox`:
one new interpreter per program, candidate and tests in one process, no private filesystem.
Not used by score-ray itself; do not fix or extend it (it is the baseline). Its original
module docstring follows.

Run one untrusted Python program in a throw-away, resource-limited process.

`run_untrusted(program, timeout_s, limits)` is the only way score-ray executes model-written
code. Every call gets its own process, started as

    setpriv --pdeathsig KILL -- unshare --net --pid --fork --kill-child -- \\
        PYTHON -I -S -c BOOTSTRAP PARAMS

and the trusted BOOTSTRAP (below) prepares the process before any candidate code runs:

1. reads a random per-run nonce from a pipe and closes that pipe;
2. applies resource limits (`resource.setrlimit`): CPU seconds, address space, file size,
   processes (RLIMIT_NPROC), open files, no core dumps;
3. as root: drops to the unprivileged `nobody` uid/gid with no supplementary groups;
4. removes process-spawning, signalling and networking entry points from `os`/`posix` and
   blocks `socket`, `subprocess`, `ctypes`, `multiprocessing`, ... (defence in depth only:
   the uid, the namespaces and the rlimits are the containment; this preamble can be undone
   from Python and is not relied on);
5. executes `program` (candidate code followed by its tests) as module `__candidate__`;
6. only if that returns without raising, writes the nonce to a result pipe and exits 0.

The parent gives a pass only if the result pipe carries exactly the nonce AND the process
exited 0 AND the wall-clock timeout did not fire. The verdict never looks at stdout: printing
"all tests passed", `os._exit(0)`, `sys.exit(0)`, raising SystemExit or dying early all fail.

What the nonce scheme guarantees and what it does not: candidate and tests share one
interpreter, so a program that deliberately hunts for the nonce (in the bootstrap's frame,
via `gc`, or by reading the memory of its own process) can forge a pass, as can a "solution"
whose return values lie about equality (`__eq__` returning True). The nonce stops every
accidental or lazy fake (stdout, exit status, early exit, a crash after a partial run); it is
not a defence against a program written to attack this harness. Running the tests in a
separate process that only receives plain data back would close that gap.

Why a bootstrap instead of `preexec_fn`: the verifier actors are threaded, and CPython
documents `preexec_fn` as unsafe with threads (the forked child can deadlock on a lock some
other thread held); it also disables `vfork`, making every spawn slower in a large parent.
The bootstrap runs after `exec`, single-threaded, before any untrusted byte is executed, so
the limits bind the candidate exactly as they would from `preexec_fn`.

Why `-I -S`: isolated mode ignores PYTHON* environment variables, the user site and the
current directory on `sys.path`; `-S` skips `site`, so no `.pth` file of the host's
environment runs and no site-packages are importable (HumanEval/MBPP solutions need only the
standard library). It also halves the interpreter's start-up time.

Isolation is detected once per process (`isolation()`), degrading gracefully: without
`unshare` there are no namespaces; without root there is no uid drop; if the running
interpreter's standard library is unreadable by `nobody` (e.g. a pyenv build under /root), a
system `python3` that `nobody` can run is used instead. `SandboxResult.isolation` names what
was in force, e.g. ``netns+pidns+uid:65534``.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import os
import pwd
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import IO

__all__ = ["Isolation", "SandboxLimits", "SandboxResult", "isolation", "run_untrusted"]


@dataclass(frozen=True)
class SandboxLimits:
    """Per-program resource limits, applied with setrlimit before the candidate runs."""

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
    output_bytes: int = 4096
    """How much of the program's combined stdout/stderr is kept in the result (debugging)."""


@dataclass(frozen=True)
class SandboxResult:
    passed: bool
    """The program ran to its end without raising: nonce received, exit status 0, in time."""
    timed_out: bool
    """The wall-clock timeout fired and the process group was killed."""
    returncode: int | None
    """Exit status of the sandbox process (negative: killed by that signal)."""
    output: str
    """The first `limits.output_bytes` of stdout+stderr. Never used for the verdict."""
    wall_s: float
    """Seconds from spawn to verdict."""
    isolation: str
    """The isolation in force, e.g. "netns+pidns+uid:65534" (see `Isolation.name`)."""


@dataclass(frozen=True)
class Isolation:
    """How sandbox processes are started on this host (detected once by `isolation()`)."""

    prefix: tuple[str, ...]
    """Command prefix: setpriv (parent-death signal) and unshare (namespaces), if usable."""
    python: str
    """Interpreter for candidate programs."""
    uid: int
    """uid (and gid) the bootstrap drops to; -1 keeps the caller's."""
    gid: int
    name: str
    """Parts in force: netns, pidns, userns, uid:N or uid:same."""


# Only what an interpreter needs; nothing of the caller's environment (tokens, keys) leaks.
_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8"}
_PROGRAM_FILE = "main.py"
_PROBE_PROGRAM = "import collections, functools, hashlib, itertools, json, math, re\n"
_PROBE_TIMEOUT_S = 20.0

# The trusted start of every sandbox process. Kept free of imports beyond builtins, os, sys,
# resource: each import costs start-up time on every program.
_BOOTSTRAP = r"""
import builtins, os, resource, sys

_BLOCKED_MODULES = (
    "socket", "_socket", "ssl", "_ssl", "select", "selectors", "asyncio", "subprocess",
    "_posixsubprocess", "multiprocessing", "_multiprocessing", "concurrent", "ctypes",
    "_ctypes", "pty", "urllib", "http", "ftplib", "smtplib", "telnetlib", "webbrowser",
)
_BLOCKED_CALLS = (
    "fork", "forkpty", "vfork", "system", "popen", "execl", "execle", "execlp", "execlpe",
    "execv", "execve", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe",
    "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "kill",
    "killpg", "setsid", "setpgid", "setpgrp", "setuid", "setgid", "seteuid", "setegid",
    "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "chroot", "putenv",
    "unsetenv", "pidfd_open",
)


def _lockdown():
    # Defence in depth only (undoable from Python); uid, namespaces and rlimits contain.
    import posix
    for module in (os, posix):
        for name in _BLOCKED_CALLS:
            if hasattr(module, name):
                delattr(module, name)
    for name in _BLOCKED_MODULES:
        sys.modules[name] = None


def _describe(error):
    try:
        tb, line = error.__traceback__, 0
        while tb is not None:
            if tb.tb_frame.f_code.co_filename == "main.py":
                line = tb.tb_lineno
            tb = tb.tb_next
        return "main.py:%d: %s: %s\n" % (line, type(error).__name__, str(error)[:500])
    except BaseException:
        return "main.py: failed\n"


def _boot():
    (nonce_fd, result_fd, uid, gid, cpu, mem, fsize, nproc, nofile) = map(
        int, sys.argv[1].split(",")
    )
    nonce = os.read(nonce_fd, 64)
    os.close(nonce_fd)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if uid >= 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
            os._exit(3)
    write, exit_, stderr = os.write, os._exit, sys.stderr
    with open("main.py", "rb") as file:
        source = file.read()
    sys.argv[:] = ["main.py"]
    _lockdown()
    module = type(sys)("__candidate__")  # not __main__: `if __name__ == "__main__"` demos skip
    sys.modules["__candidate__"] = module
    message = None
    try:
        exec(compile(source, "main.py", "exec"), module.__dict__)
    except BaseException as error:  # SystemExit included: exiting early is not passing
        message = _describe(error)
    try:  # keep what the program printed (debugging only; the verdict ignores it)
        sys.stdout.flush()
    except BaseException:
        pass
    if message is None:
        write(result_fd, nonce)
        exit_(0)
    try:
        stderr.write(message)
        stderr.flush()
    except BaseException:
        pass
    exit_(1)


_boot()
"""


def run_untrusted(
    program: str, timeout_s: float, limits: SandboxLimits | None = None
) -> SandboxResult:
    """Execute `program` in a fresh sandbox process; passed iff it ran to its end.

    Never raises because of what `program` does. Raises OSError only if the host cannot
    start a process at all (no free pids, no disk for the temporary directory).
    """
    return _run(program, timeout_s, limits or SandboxLimits(), isolation())


_detect_lock = threading.Lock()


def isolation() -> Isolation:
    """The strongest isolation this host supports, probed once per process."""
    with _detect_lock:  # probing spawns processes; do it once even with concurrent callers
        return _detect()


@functools.cache
def _detect() -> Isolation:
    prefix, parts = _namespace_prefix()
    uid, gid = _unprivileged_ids()
    # Strongest first: namespaces + nobody, namespaces alone, a plain process. The caller's
    # uid is kept only if no interpreter's standard library is readable by `nobody`.
    attempts = [(prefix, tuple(parts), uid, gid)] if uid >= 0 else []
    attempts += [(prefix, tuple(parts), -1, -1), ((), (), -1, -1)]
    for command, names, run_uid, run_gid in dict.fromkeys(attempts):  # dedupe, keep order
        for python in _python_candidates():
            if _probe(command, python, run_uid, run_gid):
                who = f"uid:{run_uid}" if run_uid >= 0 else "uid:same"
                name = "+".join([*names, who])
                return Isolation(command, python, run_uid, run_gid, name)
    raise OSError("sandbox: no Python interpreter can run candidate programs on this host")


def _namespace_prefix() -> tuple[tuple[str, ...], list[str]]:
    """setpriv/unshare prefix that works here, and the names of the namespaces it adds."""
    prefix: tuple[str, ...] = ()
    setpriv = shutil.which("setpriv")
    # Parent-death signal: if the verifier dies mid-run, its sandbox dies with it.
    if setpriv and _runs([setpriv, "--pdeathsig", "KILL", "--", "true"]):
        prefix = (setpriv, "--pdeathsig", "KILL", "--")
    unshare = shutil.which("unshare")
    if unshare is None:
        return prefix, []
    # A new network namespace has only a downed loopback: no socket reaches anything. A new
    # PID namespace dies as a whole when its first process dies, so no child outlives a run.
    common = ("--net", "--pid", "--fork", "--kill-child", "--")
    options: list[tuple[tuple[str, ...], list[str]]] = []
    if os.geteuid() != 0:  # unprivileged: a user namespace is needed to create the others
        options.append(
            ((unshare, "--user", "--map-root-user", *common), ["userns", "netns", "pidns"])
        )
    options.append(((unshare, *common), ["netns", "pidns"]))
    for command, parts in options:
        if _runs([*prefix, *command, "true"]):
            return (*prefix, *command), parts
    return prefix, []


def _runs(command: list[str]) -> bool:
    try:
        done = subprocess.run(
            command, env=_ENV, stdin=subprocess.DEVNULL, capture_output=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


def _unprivileged_ids() -> tuple[int, int]:
    """(uid, gid) of `nobody` if we are root (and can therefore drop to it), else (-1, -1)."""
    if os.geteuid() != 0:
        return -1, -1
    try:
        entry = pwd.getpwnam("nobody")
        return entry.pw_uid, entry.pw_gid
    except KeyError:
        return 65534, 65534


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


def _probe(prefix: tuple[str, ...], python: str, uid: int, gid: int) -> bool:
    candidate = Isolation(prefix, python, uid, gid, "probe")
    try:
        return _run(_PROBE_PROGRAM, _PROBE_TIMEOUT_S, SandboxLimits(), candidate).passed
    except OSError:
        return False


def _run(program: str, timeout_s: float, limits: SandboxLimits, iso: Isolation) -> SandboxResult:
    started = time.perf_counter()
    nonce = secrets.token_hex(16).encode("ascii")
    # The output file is anonymous (O_TMPFILE): the program cannot swap it for a symlink or
    # a FIFO that the parent, as root, would then read or block on.
    with (
        tempfile.TemporaryDirectory(prefix="score-ray-sbx-", ignore_cleanup_errors=True) as work,
        tempfile.TemporaryFile() as output,
    ):
        _prepare_workdir(work, program, iso)
        returncode, timed_out, reported = _execute(work, iso, limits, nonce, output, timeout_s)
        output.seek(0)
        head = output.read(max(0, limits.output_bytes)).decode("utf-8", "replace")
    passed = not timed_out and returncode == 0 and hmac.compare_digest(reported, nonce)
    return SandboxResult(
        passed=passed,
        timed_out=timed_out,
        returncode=returncode,
        output=head,
        wall_s=time.perf_counter() - started,
        isolation=iso.name,
    )


def _execute(
    work: str,
    iso: Isolation,
    limits: SandboxLimits,
    nonce: bytes,
    output: IO[bytes],
    timeout_s: float,
) -> tuple[int, bool, bytes]:
    """Spawn, wait, kill: (exit status, timed out, what the result pipe carried)."""
    nonce_r, nonce_w = os.pipe()
    result_r, result_w = os.pipe()
    try:
        os.write(nonce_w, nonce)  # 32 bytes fit in any pipe buffer: never blocks
        os.close(nonce_w)
        nonce_w = -1
        proc = _spawn(work, iso, limits, (nonce_r, result_w), output)
        os.close(nonce_r)
        os.close(result_w)
        nonce_r = result_w = -1
        timed_out = _wait_or_kill(proc, timeout_s)
        return proc.returncode, timed_out, _read_available(result_r)
    finally:
        for fd in (nonce_r, nonce_w, result_r, result_w):
            if fd >= 0:
                os.close(fd)


def _prepare_workdir(work: str, program: str, iso: Isolation) -> None:
    # surrogatepass: a lone surrogate becomes invalid UTF-8, which the child rejects as a
    # SyntaxError (a failure), instead of crashing the verifier here.
    with open(os.path.join(work, _PROGRAM_FILE), "wb") as file:
        file.write(program.encode("utf-8", "surrogatepass"))
    os.chmod(os.path.join(work, _PROGRAM_FILE), 0o644)
    if iso.uid >= 0:
        os.chown(work, iso.uid, iso.gid)  # the candidate's cwd is writable by it, nothing else


def _spawn(
    work: str, iso: Isolation, limits: SandboxLimits, fds: tuple[int, int], output: IO[bytes]
) -> subprocess.Popen:
    mib = 1024 * 1024
    params = ",".join(
        str(value)
        for value in (
            *fds,
            iso.uid,
            iso.gid,
            max(1, int(limits.cpu_s)),
            limits.memory_mb * mib,
            limits.file_size_mb * mib,
            limits.max_processes,
            limits.max_open_files,
        )
    )
    command = [*iso.prefix, iso.python, "-I", "-S", "-c", _BOOTSTRAP, params]
    # Output goes to a file, not a pipe: RLIMIT_FSIZE bounds it and nothing has to drain it
    # concurrently; a program printing gigabytes costs the parent nothing.
    return subprocess.Popen(
        command,
        cwd=work,
        env=_ENV,
        stdin=subprocess.DEVNULL,
        stdout=output,
        stderr=subprocess.STDOUT,
        pass_fds=fds,
        start_new_session=True,
    )


def _wait_or_kill(proc: subprocess.Popen, timeout_s: float) -> bool:
    """Wait up to `timeout_s` for the process; then kill its whole group. True if timed out.

    The exit is observed through a pidfd without reaping, so the group id cannot be reused
    by an unrelated process before `killpg` runs.
    """
    try:
        pidfd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):  # Linux < 5.3: plain wait (tiny pid-reuse window)
        pidfd = -1
    if pidfd >= 0:
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            timed_out = not poller.poll(max(0.0, timeout_s) * 1000)
        finally:
            os.close(pidfd)
    else:
        try:
            proc.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            timed_out = True
    # Always: anything the program left behind in its group dies with it. With a PID
    # namespace the kernel also kills every process of the namespace when its init dies.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        proc.kill()
    proc.wait()
    return timed_out


def _read_available(fd: int) -> bytes:
    """What is in the pipe now. Non-blocking: a leftover writer must not stall the verdict."""
    os.set_blocking(fd, False)
    try:
        return os.read(fd, 256)
    except BlockingIOError:
        return b""
