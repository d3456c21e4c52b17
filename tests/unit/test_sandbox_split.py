"""Tests apart from the candidate: the tests' process sees only plain data from the candidate.

`run_tests` runs the candidate in one sandboxed process and the trusted tests in another;
each name the tests call is a proxy that sends plain-data arguments and receives a plain-data
result. These check the round trip against values worked out by hand, and that every way for
a candidate to fake a pass (lying objects, exiting, hunting for the nonce or the tests,
touching the test process, garbage on the channel) scores 0.
"""

from __future__ import annotations

import math
import secrets
import textwrap

import pytest

from score_ray.verify.sandbox import SandboxLimits, SandboxResult, run_tests

TIMEOUT_S = 5.0


def check(candidate: str, tests: str, **kwargs) -> SandboxResult:
    return run_tests(textwrap.dedent(candidate), textwrap.dedent(tests), TIMEOUT_S, **kwargs)


def assert_fails(result: SandboxResult) -> None:
    assert not result.passed, result


# --- plain data round trip ----------------------------------------------------------------

ECHO = "def echo(*args, **kwargs):\n    return [args, kwargs]\n"


@pytest.mark.parametrize(
    "value",
    [
        "None",
        "True",
        "-7",
        "10 ** 40",
        "2.5",
        "float('inf')",
        "'héllo \\ud800 \\x00'",
        "b'\\x00\\xff'",
        "3 - 4j",
        "[1, [2, [3]]]",
        "(1, (2.0, 'x'), ())",
        "{'a': 1, 2: [3], (4, 5): {6: None}}",
        "{1, 2, (3, 4)}",
        "frozenset({'a', frozenset({1})})",
        "[True, 1, 1.0]",
    ],
)
def test_plain_values_cross_unchanged_both_ways(value):
    # The candidate gets the value as an argument and returns it; the tests compare types
    # exactly (a tuple must not come back as a list, True not as 1).
    tests = f"""
    value = {value}
    got = echo(value, key=value)
    assert got == [(value,), {{"key": value}}], got
    def same(a, b):
        assert type(a) is type(b), (a, b)
        if type(a) in (list, tuple):
            assert len(a) == len(b)
            for x, y in zip(a, b):
                same(x, y)
        elif type(a) is dict:
            for k in a:
                same(a[k], b[k])
    same(got[0][0], value)
    """
    result = check(ECHO, tests)
    assert result.passed, result


def test_nan_crosses_as_nan():
    result = check(ECHO, "import math\nassert math.isnan(echo(float('nan'))[0][0])\n")
    assert result.passed, result


def test_state_persists_across_calls_and_exceptions_keep_their_builtin_type():
    candidate = """
    calls = []
    def count(x):
        calls.append(x)
        return len(calls)
    def divide(a, b):
        return a / b
    class Weird(Exception):
        pass
    def weird():
        raise Weird("custom")
    """
    tests = """
    assert count("a") == 1 and count("b") == 2 and count("c") == 3
    try:
        divide(1, 0)
    except ZeroDivisionError as error:
        assert "division" in str(error)
    else:
        raise AssertionError("no exception")
    try:
        weird()
    except ZeroDivisionError:
        raise AssertionError("wrong type")
    except Exception as error:
        assert "Weird: custom" in str(error)
    """
    result = check(candidate, tests)
    assert result.passed, result


def test_arguments_are_copies():
    # Plain data means values, not references: a mutation in the candidate stays there.
    candidate = "def clear(items):\n    items.clear()\n    return len(items)\n"
    result = check(candidate, "items = [1, 2]\nassert clear(items) == 0\nassert items == [1, 2]\n")
    assert result.passed, result


def test_setup_and_calls_choose_what_is_proxied():
    # HumanEval's shape: the trusted prompt defines a helper the tests use; only the entry
    # point reaches the candidate, even if the candidate redefines the helper.
    candidate = """
    def shift(s):
        return "forged"
    def decode(s):
        return "".join(chr(ord(c) - 1) for c in s)
    """
    setup = "def shift(s):\n    return ''.join(chr(ord(c) + 1) for c in s)\n"
    tests = "assert decode(shift('abc')) == 'abc'\n"
    result = check(candidate, tests, setup=setup, calls=("decode",))
    assert result.passed, result


def test_default_calls_skip_builtins_and_setup_names():
    # MBPP's shape: names only the candidate defines are proxied; its `sorted` and `math`
    # never replace the tests' own.
    candidate = """
    def sorted(x):
        return "forged"
    math = None
    def smallest(items):
        return [] if items == [1] else min(items)
    """
    tests = "import math\nassert smallest([3, 1, 2]) == sorted([1])[0]\nassert math.pi > 3\n"
    result = check(candidate, tests)
    assert result.passed, result
    assert_fails(check(candidate, "assert smallest([1]) == sorted([1])\n"))


def test_a_missing_function_fails():
    assert_fails(check("def other():\n    return 1\n", "assert wanted() == 1\n"))
    assert_fails(check("x = 1\n", "assert wanted() == 1\n", calls=("wanted",)))


# --- lying results ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "result_expression",
    [
        "AlwaysEqual()",
        "EqualList([1, 2])",
        "EqualStr('x')",
        "EqualInt(3)",
        "EqualDict(a=1)",
        "(x for x in [1, 2])",
        "lambda: 1",
        "object()",
        "[AlwaysEqual()]",
        "{'key': AlwaysEqual()}",
        "Ellipsis",
        "NotImplemented",
        "type",
        "range(3)",
    ],
)
def test_non_plain_results_fail(result_expression):
    candidate = f"""
    class AlwaysEqual:
        def __eq__(self, other):
            return True
        def __ne__(self, other):
            return False
        __hash__ = object.__hash__
    class EqualList(list):
        def __eq__(self, other):
            return True
    class EqualStr(str):
        def __eq__(self, other):
            return True
        __hash__ = str.__hash__
    class EqualInt(int):
        def __eq__(self, other):
            return True
        __hash__ = int.__hash__
    class EqualDict(dict):
        def __eq__(self, other):
            return True
    def solve():
        return {result_expression}
    """
    assert_fails(check(candidate, "assert solve() == [1, 2]\n"))


def test_self_referencing_and_huge_results_fail():
    assert_fails(check("def solve():\n    x = []\n    x.append(x)\n    return x\n", "solve()\n"))
    huge = "def solve():\n    return 'x' * (32 * 1024 * 1024)\n"
    assert_fails(check(huge, "assert solve() == ''\n", limits=SandboxLimits(memory_mb=1024)))


def test_a_deeply_nested_reply_fails_without_crashing_the_verifier():
    candidate = "def solve():\n    return 'unused'\n"
    # The candidate cannot build this itself (recursion limit), so it writes it to its channel.
    writer = """
    import json, struct, sys
    for name in ("socket", "_socket"):
        sys.modules.pop(name, None)
    import socket
    def solve():
        payload = b'["ok", ' + b'[' * 100000 + b']' * 100000 + b']'
        for fd in range(3, 20):
            try:
                sock = socket.socket(fileno=fd)
                sock.sendall(struct.pack(">I", len(payload)) + payload)
            except OSError:
                pass
        return 'unused'
    """
    assert_fails(check(writer, "assert solve() == []\n"))
    assert check(candidate, "assert solve() == 'unused'\n").passed


# --- exits, hangs, the test process -------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        "import sys; sys.exit(0)",
        "import os; os._exit(0)",
        "raise SystemExit(0)",
        "raise KeyboardInterrupt",
    ],
)
def test_exiting_inside_a_call_fails(body):
    candidate = f"def solve():\n    {body}\n"
    tests = "try:\n    solve()\nexcept Exception:\n    pass\n"  # tests that swallow errors
    assert_fails(check(candidate, tests))


def test_a_call_that_never_returns_times_out():
    result = run_tests("def solve():\n    while True:\n        pass\n", "solve()\n", 1.0)
    assert_fails(result)
    assert result.timed_out


UNBLOCK = """
import sys
for _name in ("posix", "ctypes", "_ctypes"):
    sys.modules.pop(_name, None)
import posix
"""


def test_the_test_process_is_out_of_sight():
    # The candidate is PID 1 of its own PID namespace: the test process has no pid there.
    candidate = UNBLOCK + textwrap.dedent(
        """
        def look():
            pids = sorted(int(p) for p in posix.listdir("/proc") if p.isdigit())
            return [posix.getpid(), posix.getppid(), pids]
        """
    )
    result = check(candidate, "assert look() == [1, 0, [1]]\n")
    assert result.passed, result


# Each finds the test process (the one process of the tests' uid) through the host's view, as
# it would without the PID namespace, then attacks it.
FIND_TESTS = "[int(p) for p in posix.listdir('/proc') if p.isdigit() and int(p) > 1][:1] or [0]"


@pytest.mark.parametrize(
    "attack",
    [
        "posix.kill(0, 9)",
        "posix.kill(-1, 9)",
        "posix.kill({tests}[0], 9)",
        "open('/proc/%d/mem' % {tests}[0], 'rb').read(1)",
        "open('/proc/%d/environ' % {tests}[0], 'rb').read()",
        "posix.listdir('/proc/%d/fd' % {tests}[0])",
        "import ctypes; assert ctypes.CDLL(None).ptrace(16, {tests}[0], 0, 0) == 0",
    ],
    ids=["kill-group", "kill-all", "kill-tests", "mem", "environ", "fds", "ptrace"],
)
def test_touching_the_test_process_fails(attack):
    # A wrong answer that tries to reach the test process first: must fail either way.
    attack = attack.format(tests=FIND_TESTS)
    candidate = UNBLOCK + f"def solve():\n    {attack}\n    return 'wrong'\n"
    assert_fails(check(candidate, "assert solve() == 'right'\n"))


def test_the_candidate_cannot_find_the_tests_or_the_nonce():
    # Everything T knows arrives after C was forked: C's memory holds neither the tests (here
    # a random secret, as a hidden expected value would be) nor the nonce. C reads its whole
    # address space for both patterns (a pattern never matches its own text).
    candidate = UNBLOCK + textwrap.dedent(
        """
        import ctypes, re
        def scan():
            found = set()
            for line in open("/proc/self/maps").read().splitlines():
                span, perms = line.split()[:2]
                if not perms.startswith("r") or "[vvar" in line or "[vsyscall" in line:
                    continue
                start, end = (int(x, 16) for x in span.split("-"))
                data = ctypes.string_at(start, end - start)
                found.update(re.findall(rb"SECRET-[0-9a-f]{16}", data))
                found.update(re.findall(rb"P[0-9a-f]{32}", data))
            return len(found)
        """
    )
    result = check(candidate, f"assert scan() == 0  # SECRET-{secrets.token_hex(8)}\n")
    assert result.passed, result


@pytest.mark.parametrize(
    "payload",
    [b'\x00\x00\x00\x05["ok"', b"\xff\xff\xff\xff", b"\x00\x00\x00\x02{}"],
    ids=["truncated", "oversized", "not-a-reply"],
)
def test_garbage_on_the_channel_fails(payload):
    # A well-formed reply written to the channel is only an answer the candidate could have
    # returned; malformed bytes end the run.
    candidate = f"""
    import os
    def solve():
        for fd in range(3, 64):
            try:
                os.write(fd, {payload!r})
            except OSError:
                pass
        return True
    """
    assert_fails(check(candidate, "assert solve() is True\n"))


def test_tests_that_pass_non_plain_arguments_fail():
    # A limit of the split, on the tests' side: arguments must be plain data too.
    assert_fails(check("def apply(f):\n    return f(1)\n", "assert apply(lambda x: x) == 1\n"))


def test_a_candidate_that_raises_while_loading_fails():
    assert_fails(check("def solve():\n    return 1\nraise ValueError('late')\n", "solve()\n"))
    assert check("def solve():\n    return 1\n", "assert solve() == 1\n").passed


def test_math_results_are_exact_floats():
    result = check(
        "import math\ndef root(x):\n    return math.sqrt(x)\n",
        f"assert root(2) == {math.sqrt(2)!r}\n",
    )
    assert result.passed, result
