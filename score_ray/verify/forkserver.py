"""The trusted inside of the code sandbox: a fork server and the two processes of each run.

`score_ray.verify.sandbox` starts this file once per process as `PYTHON -I -S forkserver.py`
(standard library only, never imported by score-ray) and talks to it over a Unix socket. The
server preloads the modules programs commonly import, then forks, per program:

    server --fork--> runner R     own session; new mount, network and IPC namespaces: the
                                  host root read-only, private tmpfs mounts; then it drops to
                                  the tests' uid and is the test process
    R --fork-------> candidate C  PID 1 of a new PID namespace (fresh /proc); runs the
                                  model's code as the sandbox uid and answers the tests' calls

Why forks of one server instead of a new interpreter per program: interpreter start-up and
imports were two thirds of a program's cost, and the tests now need a second process.

What each process may touch:
- C gets its code, one end of a socket pair to R, and the output file; nothing else (the
  server socket, the tests and the result pipe are closed before any of its code runs). It
  runs as the sandbox uid (nobody), so it cannot signal, trace or read the memory of R, and
  from its PID namespace it cannot even name R.
- R reads the tests only after C is forked, drops to a second unprivileged uid and runs
  them. Every name the tests call on the candidate is a proxy: its arguments go to C as plain
  data and only plain data comes back (None, bool, int, float, complex, str, bytes, and
  lists, tuples, dicts, sets and frozensets of them, of exactly those types; a Counter,
  OrderedDict or defaultdict goes as the dict of its items). So an object
  whose `__eq__` always says True never reaches the tests, and no secret of R is in C's
  memory. R alone writes the pass marker, then its exit status and the run's CPU time.
- The server (root, trusted) kills what is left of R's process group when R ends, before it
  reaps R (so the group id cannot have been reused).

Wire format between R and C: a 4-byte big-endian length, then JSON; tuples, dicts, sets,
frozensets, bytes and complex numbers are one-key objects ({"t": [...]}, {"d": [[k, v]]}, ...).
A malformed or oversized message, a non-plain value or a vanished candidate fails the run.
"""

from __future__ import annotations

import builtins
import collections
import contextlib
import ctypes
import gc
import json
import os
import resource
import select
import signal
import socket
import struct
import sys

# Imported once here so that forked programs do not pay for them (a fork shares them).
PRELOAD = (
    "bisect", "collections", "copy", "datetime", "decimal", "fractions", "functools",
    "hashlib", "heapq", "itertools", "math", "operator", "random", "re", "statistics",
    "string", "typing",
)  # fmt: skip

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
NAMESPACE_FLAGS = {
    "mnt": CLONE_NEWNS,
    "pid": CLONE_NEWPID,
    "net": CLONE_NEWNET,
    "ipc": CLONE_NEWIPC,
}

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
# Per-mount flags a read-only bind re-mount must repeat (the kernel refuses to drop them).
MOUNT_OPTION_FLAGS = {
    "nosuid": MS_NOSUID, "nodev": MS_NODEV, "noexec": MS_NOEXEC, "noatime": MS_NOATIME,
    "nodiratime": MS_NODIRATIME, "relatime": MS_RELATIME,
}  # fmt: skip
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 1, 4, 36

WORKDIR = "/tmp/sandbox"
"""The candidate's cwd and $HOME under a private filesystem: its own tmpfs."""
SCRATCH_DIRS = ("/tmp", "/var/tmp", "/dev/shm")
"""World-writable host directories, each hidden under a private tmpfs."""
MAX_MESSAGE = 16 * 1024 * 1024
"""Largest message between tests and candidate; a larger one fails the run."""
MAX_EXPORTS = 1000
RUNNER_SETUP_FAILED = 120
"""Exit status of R when the sandbox could not be set up (namespaces, mounts, uids)."""
CHILD_WAIT_S = 0.2
"""How long R waits for C to exit after the tests; then the server kills R's group."""

_libc = ctypes.CDLL(None, use_errno=True)
_server_pid = -1
_exit = os._exit  # bound once: a candidate that replaces os._exit still cannot stay alive in
# the code of its parent after `_fork` (it would only spin until the timeout)


class Fatal(BaseException):  # not an Exception: the tests cannot swallow it
    """The candidate broke the protocol (non-plain value, died, garbage): the run fails."""


class CandidateError(Exception):
    """The candidate's function raised an exception that is not a builtin one."""


# --- system calls -------------------------------------------------------------------------


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def unshare(flags: int) -> None:
    _check(_libc.unshare(ctypes.c_int(flags)), "unshare")


def mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    _check(
        _libc.mount(
            source.encode(),
            target.encode(),
            fstype.encode() if fstype else None,
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount {target}",
    )


def prctl(option: int, value: int) -> None:
    _check(_libc.prctl(ctypes.c_int(option), ctypes.c_ulong(value), 0, 0, 0), "prctl")


# --- plain data ---------------------------------------------------------------------------

_SCALARS = (type(None), bool, int, float, str)
# The standard library's dicts that MBPP solutions return (`Counter(...)`): sent as the plain
# dict of their items, read with dict's own method. Any other subclass of a plain type fails.
_DICTS = (dict, collections.Counter, collections.OrderedDict, collections.defaultdict)


def encode(value: object) -> object:
    """`value` as JSON-able data; TypeError for anything but exact plain types."""
    kind = type(value)
    if kind in _SCALARS:
        return value
    if kind is list:
        return [encode(item) for item in value]  # type: ignore[attr-defined]
    if kind is tuple:
        return {"t": [encode(item) for item in value]}  # type: ignore[attr-defined]
    if kind in _DICTS:
        return {"d": [[encode(k), encode(v)] for k, v in dict.items(value)]}  # type: ignore[arg-type]
    if kind is set or kind is frozenset:
        return {"s" if kind is set else "f": [encode(item) for item in value]}  # type: ignore[attr-defined]
    if kind is bytes:
        return {"b": value.hex()}  # type: ignore[attr-defined]
    if kind is complex:
        return {"c": [value.real, value.imag]}  # type: ignore[attr-defined]
    raise TypeError(f"not plain data: {kind.__name__}")


def decode(data: object) -> object:
    """The inverse of `encode` for untrusted input; ValueError/TypeError if malformed."""
    if type(data) is list:
        return [decode(item) for item in data]
    if type(data) is not dict:
        return data  # json.loads made it: None, bool, int, float or str
    if len(data) != 1:
        raise ValueError("tagged value with more than one key")
    ((tag, body),) = data.items()
    items = body if type(body) is list else None
    if tag == "t" and items is not None:
        return tuple(decode(item) for item in items)
    if tag == "d" and items is not None:
        return {decode(k): decode(v) for k, v in (_pair(item) for item in items)}
    if tag in ("s", "f") and items is not None:
        values = (decode(item) for item in items)
        return set(values) if tag == "s" else frozenset(values)
    if tag == "b" and type(body) is str:
        return bytes.fromhex(body)
    if tag == "c" and items is not None and len(items) == 2:
        real, imag = items
        if type(real) in (int, float) and type(imag) in (int, float):
            return complex(real, imag)
    raise ValueError(f"malformed tagged value {tag!r}")


def _pair(item: object) -> tuple[object, object]:
    if type(item) is not list or len(item) != 2:
        raise ValueError("malformed dict item")
    return item[0], item[1]


def send(channel: socket.socket, message: object) -> None:
    payload = json.dumps(message, separators=(",", ":")).encode()
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"message of {len(payload)} bytes is too large")
    channel.sendall(struct.pack(">I", len(payload)) + payload)


def receive(channel: socket.socket) -> object:
    """The next message, or Fatal if the peer is gone or sent something malformed."""
    try:
        (size,) = struct.unpack(">I", _read_exactly(channel, 4))
        if size > MAX_MESSAGE:
            raise ValueError(f"message of {size} bytes is too large")
        return json.loads(_read_exactly(channel, size))
    except (OSError, EOFError, ValueError, RecursionError, MemoryError) as error:
        raise Fatal(f"candidate channel: {type(error).__name__}: {error}") from None


def _read_exactly(channel: socket.socket, size: int) -> bytes:
    chunks, left = [], size
    while left:
        chunk = channel.recv(min(left, 1 << 20))
        if not chunk:
            raise EOFError("the candidate process ended")
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


# --- the server ---------------------------------------------------------------------------


def _fork(function, *args) -> int:
    """Fork; the child runs `function(*args)` and exits with the status it returns. Whatever
    happens in the child, it never returns into the parent's code."""
    pid = os.fork()
    if pid:
        return pid
    status = 1
    try:
        status = function(*args)
    except BaseException as error:
        _say(f"{function.__name__}: {type(error).__name__}: {error}\n")
    finally:
        _flush()
        _exit(status if type(status) is int else 1)


def serve(server: socket.socket) -> None:
    """Fork a runner per request; reply with its pid and a pidfd. Exit when the caller goes."""
    global _server_pid
    _server_pid = os.getpid()
    for name in PRELOAD:
        __import__(name)
    # Keep the collector off the preloaded objects: touching them would copy their pages
    # into every forked process.
    gc.freeze()
    prctl(PR_SET_DUMPABLE, 0)  # no process of the caller's uid may trace or read us
    # Orphans of a run (a candidate whose runner was killed, leftovers without a PID
    # namespace) become ours, not the host init's: reaped at once, they stop counting against
    # the sandbox uid's RLIMIT_NPROC.
    prctl(PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGCHLD, _reap)
    while True:
        try:
            message, fds, _, _ = socket.recv_fds(server, 1 << 16, 8)
        except OSError:
            message, fds = b"", []
        if not message:  # the caller closed the socket or died: the runners die with us
            os._exit(0)
        # SIGCHLD waits until the pidfd is open: a runner reaped before would free its pid.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            pid = _fork(_runner, json.loads(message), fds, server)
            pidfd = os.pidfd_open(pid)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        for fd in fds:
            os.close(fd)
        try:
            socket.send_fds(server, [struct.pack("i", pid)], [pidfd])
        finally:
            os.close(pidfd)


def _reap(*_: object) -> None:
    """SIGCHLD: for each runner (or orphan) that ended, kill what is left of its process
    group, then reap it. Until it is reaped its pid (= its group's id) cannot be reused, so the
    kill is exact; this ends the leftovers of a run without a PID namespace, or of a killed
    run."""
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None:
            return
        with contextlib.suppress(OSError):
            os.killpg(info.si_pid, signal.SIGKILL)
        with contextlib.suppress(ChildProcessError):
            os.waitpid(info.si_pid, 0)


def _runner(spec: dict, fds: list[int], server: socket.socket) -> int:
    """R: namespaces and filesystem, fork C, then be the test process; report and exit.

    The tests are read only after C is forked, so C's memory never holds them."""
    code_fd, tests_fd, result_fd, output_fd = fds
    status, pid = RUNNER_SETUP_FAILED, 0
    try:
        server.close()  # nothing below may reach the fork server
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        os.setsid()  # the server kills this group when the run ends
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != _server_pid:  # the server died before prctl: nobody waits for us
            return 1
        _only_fds((code_fd, tests_fd, result_fd, output_fd), output_fd)
        flags = 0
        for name in spec["namespaces"]:
            flags |= NAMESPACE_FLAGS[name]
        if flags:
            unshare(flags)  # R enters the new mount, network and IPC namespaces; C the PID one
        if flags & CLONE_NEWNS:
            _private_filesystem(spec)
        mine, theirs = socket.socketpair()
        pid = _fork(_candidate_process, spec, code_fd, theirs, mine, (tests_fd, result_fd))
        theirs.close()
        os.close(code_fd)
        with os.fdopen(tests_fd, "rb") as file:
            tests = json.loads(file.read())
        _confine(spec, spec["test_uid"], spec["test_gid"])
        prctl(PR_SET_DUMPABLE, 0)  # even at the same uid, C may not trace or read R
        if os.getppid() != _server_pid:  # the server died before the death signal was armed
            return 1
    except BaseException as error:
        _say(f"sandbox setup failed: {type(error).__name__}: {error}\n")
    else:
        status = _test(tests, mine, result_fd)
        mine.close()
        _await(pid)
    os.write(result_fd, b"S" + struct.pack(">id", status, _cpu_seconds()))
    return status


def _test(tests: dict, channel: socket.socket, result_fd: int) -> int:
    """Run the tests against C; only a full pass writes the marker. The exit status."""
    try:
        _run_tests(tests, channel)
    except Fatal as error:  # the candidate's doing, not a test's
        _say(f"tests stopped: {error}\n")
        return 1
    except BaseException as error:
        _say(_describe(error, ("tests.py", "setup.py")))
        return 1
    os.write(result_fd, b"P" + tests["nonce"].encode())
    return 0


def _cpu_seconds() -> float:
    """CPU time of this runner and of the processes it (and they) reaped: the whole run."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _only_fds(keep: tuple[int, ...], output_fd: int) -> None:
    """Close every inherited descriptor but `keep`; stdout and stderr go to the output file."""
    os.dup2(output_fd, 1)
    os.dup2(output_fd, 2)
    low = 3
    for fd in sorted(keep):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def _say(text: str) -> None:
    with contextlib.suppress(OSError):
        os.write(2, text.encode("utf-8", "replace"))


def _private_filesystem(spec: dict) -> None:
    """In R's new mount namespace: the host read-only; size-limited private tmpfs mounts on
    the world-writable directories and the work directory."""
    mount("none", "/", None, MS_REC | MS_PRIVATE, None)  # nothing propagates to the host
    for target, flags in _mounts():
        mount("none", target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | flags, None)
    size = f"size={spec['tmpfs_mb']}m,nr_inodes={spec['tmpfs_inodes']}"
    for target in SCRATCH_DIRS:
        if os.path.isdir(target):
            mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode=1777")
    os.mkdir(WORKDIR, 0o755)
    uid, gid = max(spec["uid"], 0), max(spec["gid"], 0)
    mount("tmpfs", WORKDIR, "tmpfs", MS_NOSUID | MS_NODEV, f"{size},mode=700,uid={uid},gid={gid}")


def _mounts() -> list[tuple[str, int]]:
    """(mount point, flags to keep) of every mount in this namespace, parents first."""
    mounts = []
    with open("/proc/self/mountinfo", "rb") as file:
        for line in file.read().decode("utf-8", "replace").splitlines():
            fields = line.split(" ")
            target = _unescape(fields[4])
            flags = 0
            for option in fields[5].split(","):
                flags |= MOUNT_OPTION_FLAGS.get(option, 0)
            mounts.append((target, flags))
    return mounts


def _unescape(path: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \040, \011, \012, \134.
    for code in ("040", "011", "012", "134"):
        path = path.replace("\\" + code, chr(int(code, 8)))
    return path


# --- the tests ------------------------------------------------------------------------------


def _await(pid: int) -> None:
    """Give C a moment to exit after the channel closed (so its CPU time is accounted)."""
    with contextlib.suppress(OSError, ChildProcessError):
        pidfd = os.pidfd_open(pid)
        select.select([pidfd], [], [], CHILD_WAIT_S)
        os.close(pidfd)
        os.waitpid(pid, os.WNOHANG)


def _run_tests(tests: dict, channel: socket.socket) -> None:
    """Wait for the candidate to load, bind proxies, run the trusted test code."""
    reply = receive(channel)
    if type(reply) is not list or not reply or reply[0] != "ready":
        raise Fatal("the candidate's code did not run to its end")
    exported = {name for name in reply[1] if type(name) is str} if len(reply) > 1 else set()
    namespace: dict = {"__name__": "__tests__", "__builtins__": builtins}
    exec(compile(tests["setup"], "setup.py", "exec"), namespace)
    code = compile(tests["tests"], "tests.py", "exec")
    calls = tests["calls"]
    if calls is None:  # every name the tests read that only the candidate defines
        calls = [
            name
            for name in sorted(_names(code) & exported)
            if name not in namespace and not hasattr(builtins, name)
        ]
    for name in calls:
        namespace[name] = Proxy(channel, name)
    exec(code, namespace)


def _names(code) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if hasattr(const, "co_names"):
            names |= _names(const)
    return names


class Proxy:
    """Stands for a candidate's function in the tests: a call is a round trip of plain data."""

    def __init__(self, channel: socket.socket, name: str) -> None:
        self._channel = channel
        self.__name__ = name

    def __call__(self, *args: object, **kwargs: object) -> object:
        try:
            request = ["call", self.__name__, encode(list(args)), encode(kwargs)]
        except (TypeError, ValueError, RecursionError) as error:
            raise Fatal(f"the tests passed a value that is not plain data: {error}") from None
        try:
            send(self._channel, request)
        except OSError as error:
            raise Fatal(f"candidate channel: {error}") from None
        reply = receive(self._channel)
        if type(reply) is list and len(reply) == 2 and reply[0] == "ok":
            try:
                return decode(reply[1])
            except (TypeError, ValueError, RecursionError, MemoryError) as error:
                raise Fatal(f"the candidate returned malformed data: {error}") from None
        if type(reply) is list and len(reply) == 3 and reply[0] == "raise":
            raise _exception(reply[1], reply[2])
        raise Fatal(f"the candidate answered {str(reply)[:200]}")

    def __repr__(self) -> str:
        return f"<candidate {self.__name__}>"


def _exception(name: object, message: object) -> Exception:
    """The candidate's exception as a builtin exception of that name (tests may expect one)."""
    kind = getattr(builtins, name, None) if type(name) is str else None
    text = message if type(message) is str else ""
    if isinstance(kind, type) and issubclass(kind, Exception):
        try:
            return kind(text)
        except Exception:
            pass
    return CandidateError(f"{name}: {text}")


# --- C: the candidate ---------------------------------------------------------------------


def _candidate_process(
    spec: dict, code_fd: int, channel: socket.socket, tests_end: socket.socket, fds: tuple
) -> int:
    """C: drop privileges, run the candidate's code, then answer calls until the tests end."""
    try:
        if spec["fresh_proc"]:  # PID 1 of its namespace: /proc shows only its own processes
            mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        tests_end.close()
        for fd in fds:  # the tests and the result pipe
            os.close(fd)
        with os.fdopen(code_fd, "rb") as file:
            source = file.read()
        workdir = WORKDIR if "mnt" in spec["namespaces"] else spec["workdir"]
        os.chdir(workdir)
        os.environ["HOME"] = workdir
        _confine(spec, spec["uid"], spec["gid"])
        # R gone (killed at the timeout) before the death signal was armed: go too.
        if select.select([channel], [], [], 0)[0] and not channel.recv(1, socket.MSG_PEEK):
            return 1
    except BaseException as error:
        _say(f"sandbox setup failed: {type(error).__name__}: {error}\n")
        return RUNNER_SETUP_FAILED
    sys.argv[:] = ["main.py"]
    _lockdown()
    module = type(sys)("__candidate__")  # not __main__: `if __name__ == "__main__"` demos skip
    sys.modules["__candidate__"] = module
    try:
        exec(compile(source, "main.py", "exec"), module.__dict__)
        send(channel, ["ready", _exports(module.__dict__)])
    except BaseException as error:  # SystemExit included: exiting early is not passing
        _flush()
        _say(_describe(error, ("main.py",)))
        return 1
    _flush()
    while True:
        try:
            request = receive(channel)
        except Fatal:  # the tests are done (or gone)
            return 0
        send(channel, _answer(module, request))


def _confine(spec: dict, uid: int, gid: int) -> None:
    """Resource limits, then the unprivileged uid (or, in a user namespace, no capabilities)."""
    cpu, memory, file_size, processes, files = spec["limits"]
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
    resource.setrlimit(resource.RLIMIT_AS, (memory, memory))
    resource.setrlimit(resource.RLIMIT_FSIZE, (file_size, file_size))
    resource.setrlimit(resource.RLIMIT_NOFILE, (files, files))
    resource.setrlimit(resource.RLIMIT_NPROC, (processes, processes))
    if "random" in sys.modules:  # forked from one server: each run draws its own numbers
        sys.modules["random"].seed()
    if uid >= 0:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
        if os.getuid() != uid or os.geteuid() != uid or os.getegid() != gid:
            raise OSError("could not drop privileges")
    elif spec["userns"]:
        # Root only inside the caller's user namespace: a nested one leaves no capability over
        # the mounts (the kernel locks them), so the private filesystem cannot be undone.
        unshare(CLONE_NEWUSER)
    # Die with the parent. Armed (again) only now: changing credentials clears it; the caller
    # checks that its parent did not die before this line.
    prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _exports(namespace: dict) -> list[str]:
    """The candidate's callables (functions, classes) the tests may call by name."""
    names = [
        name
        for name, value in namespace.items()
        if type(name) is str and not name.startswith("__") and callable(value)
    ]
    return names[:MAX_EXPORTS]


def _answer(module: object, request: object) -> list:
    """Run one call from the tests; the reply is plain data, or the run ends."""
    if not (type(request) is list and len(request) == 4 and request[0] == "call"):
        os._exit(1)
    _, name, args, kwargs = request
    function = module.__dict__.get(name) if type(name) is str else None  # type: ignore[attr-defined]
    try:
        args, kwargs = decode(args), decode(kwargs)
        if function is None:
            raise NameError(f"name {name!r} is not defined")
        value = function(*args, **kwargs)
    except Exception as error:
        return ["raise", type(error).__name__, _text(error)]
    except BaseException as error:  # SystemExit from inside the function: not passing
        _flush()
        _say(_describe(error, ("main.py",)))
        os._exit(1)
    try:
        return ["ok", encode(value)]
    except (TypeError, ValueError, RecursionError) as error:
        _say(f"main.py: {name} returned a value that is not plain data: {error}\n")
        os._exit(1)


def _text(error: BaseException) -> str:
    try:
        return str(error)[:1000]
    except BaseException:
        return ""


def _flush() -> None:
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass


_BLOCKED_MODULES = (
    "socket", "_socket", "ssl", "_ssl", "select", "selectors", "asyncio", "subprocess",
    "_posixsubprocess", "multiprocessing", "_multiprocessing", "concurrent", "ctypes",
    "_ctypes", "pty", "urllib", "http", "ftplib", "smtplib", "telnetlib", "webbrowser",
)  # fmt: skip
_BLOCKED_CALLS = (
    "fork", "forkpty", "vfork", "system", "popen", "execl", "execle", "execlp", "execlpe",
    "execv", "execve", "execvp", "execvpe", "spawnl", "spawnle", "spawnlp", "spawnlpe",
    "spawnv", "spawnve", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "kill",
    "killpg", "setsid", "setpgid", "setpgrp", "setuid", "setgid", "seteuid", "setegid",
    "setreuid", "setregid", "setresuid", "setresgid", "setgroups", "chroot", "putenv",
    "unsetenv", "pidfd_open",
)  # fmt: skip


def _lockdown() -> None:
    """Defence in depth only (undoable from Python); uids, namespaces and rlimits contain."""
    import posix

    for module in (os, posix):
        for name in _BLOCKED_CALLS:
            if hasattr(module, name):
                delattr(module, name)
    for name in _BLOCKED_MODULES:
        sys.modules[name] = None  # type: ignore[assignment]


def _describe(error: BaseException, files: tuple[str, ...]) -> str:
    """One line for the output: where in `files` the error arose, its type and message."""
    try:
        tb, where = error.__traceback__, f"{files[0]}:0"
        while tb is not None:
            if tb.tb_frame.f_code.co_filename in files:
                where = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}"
            tb = tb.tb_next
        return f"{where}: {type(error).__name__}: {_text(error)[:500]}\n"
    except BaseException:
        return f"{files[0]}: failed\n"


if __name__ == "__main__":
    serve(socket.socket(fileno=int(sys.argv[1])))
