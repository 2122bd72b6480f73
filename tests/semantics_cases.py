"""Runtime-semantics cases through a real proxy, shared by every Lua host.

Each host's test module passes ``call(method, body) -> (status, x_rc, body)``
(200 = ok with the answer as body; 502 = ``false, rc, err`` with rc in x_rc)
and ``log() -> str`` (the proxy's log). The app is tests/apps/asyncapp.py.
"""

from __future__ import annotations

import concurrent.futures as cf
from collections.abc import Callable

Call = Callable[[str, bytes], tuple[int, str | None, bytes]]

BROKEN = {
    # method: (x-rc, a part of the message)
    "lone_surrogate": ("5", b"not valid UTF-8"),
    "surrogate_error": ("7", b"refused \\udcff here"),
    "bad_str": ("1", b"Unprintable: <Unprintable: str() failed>"),
    "raise_keyboard_interrupt": ("1", b"raised KeyboardInterrupt"),
}


def _many(call: Call, jobs: list[tuple[str, bytes]]) -> list[tuple[int, str | None, bytes]]:
    with cf.ThreadPoolExecutor(len(jobs)) as ex:
        return list(ex.map(lambda j: call(*j), jobs))


def broken_answers_lose_nothing(call: Call) -> None:
    """Unencodable results and messages, failing __str__, a KeyboardInterrupt:
    each is answered, and so is every other call of the same batches."""
    names = list(BROKEN)
    jobs = [
        (names[i % 4], b"") if i % 2 else ("timeout_first", f"ok-{i}".encode()) for i in range(40)
    ]
    for (method, body), (status, rc, answer) in zip(jobs, _many(call, jobs), strict=True):
        if method == "timeout_first":
            assert (status, answer) == (200, body), (method, status, rc, answer)
        else:
            want_rc, part = BROKEN[method]
            assert status == 502 and rc == want_rc and part in answer, (method, rc, answer)


ANSWER_MAX = 32 * 1024 * 1024  # aioresty_core.h AR_ANSWER_MAX (checked in tests/test_core.py)


def answers_up_to_the_limit(call: Call) -> None:
    """32 MiB answers pass in every host and mode; one byte more is rc 5 with a
    message naming the method and the size, and the runtime serves on."""
    status, _, answer = call("sized", str(ANSWER_MAX).encode())
    assert status == 200 and len(answer) == ANSWER_MAX and answer[:1] == b"a", status
    del answer
    status, rc, answer = call("sized", str(ANSWER_MAX + 1).encode())
    want = f"the answer to 'sized' is {ANSWER_MAX + 1} bytes, over the limit of {ANSWER_MAX}"
    assert (status, rc) == (502, "5") and want.encode() in answer, (status, rc, answer[:300])
    assert call("timeout_first", b"after")[::2] == (200, b"after")


def each_call_is_its_own_task(call: Call) -> None:
    answers = _many(call, [("task_name", b"")] * 20)
    assert all(s == 200 for s, _, _ in answers), answers
    assert len({b for _, _, b in answers}) == 20
    assert call("timeout_first", b"t")[::2] == (200, b"t")
    assert call("taskgroup", b"")[::2] == (200, b"ab")
    assert call("wait_for_shield", b"")[::2] == (200, b"s timeout")


def contextvars_do_not_leak(call: Call) -> None:
    jobs = [("ctx", f"user{i}".encode()) for i in range(30)]
    got = [b for _, _, b in _many(call, jobs)]
    assert got == [f"- user{i}".encode() for i in range(30)]
    assert call("ctx", b"later")[::2] == (200, b"- later")


def background_base_exceptions_keep_serving(call: Call, log: Callable[[], str]) -> None:
    from tests.netutil import wait_until

    for what, name in ((b"ki", "KeyboardInterrupt"), (b"exit", "SystemExit")):
        assert call("background_dies", what)[::2] == (200, b"started")
        wait_until(lambda n=name: f"{n} escaped the event loop" in log(), 5, f"{name} logged")
        jobs = [("timeout_first", f"after-{i}".encode()) for i in range(10)]
        assert [(s, b) for s, _, b in _many(call, jobs)] == [(200, b) for _, b in jobs]


def failed_calls_and_blocking_are_logged(call: Call, log: Callable[[], str]) -> None:
    """One line per failed call (method, rc, duration, message) and a warning
    naming the handler that holds the event loop, in the proxy's own log."""
    from tests.netutil import wait_until

    assert call("no_such_handler", b"")[:2] == (502, "2")
    line = "call 'no_such_handler' failed: rc=2 after "
    wait_until(lambda: line in log(), 5, "the failed-call line")
    assert "aioresty: no handler for method 'no_such_handler'" in log()
    assert call("block_loop", b"0.4")[::2] == (200, b"unblocked")
    held = "runtime 'tests.apps.asyncapp': handler 'block_loop' has held the event loop for"
    again = "runtime 'tests.apps.asyncapp': the event loop runs again, handler 'block_loop' held it"
    wait_until(lambda: held in log() and again in log(), 5, "the blocking warnings")
    assert call("timeout_first", b"ok")[::2] == (200, b"ok")
    # answered after its timeout (0.2 s) because it blocked the loop: a timeout
    status, rc, body = call("block_past_timeout", b"0.4")
    assert (status, rc) == (502, "3"), (status, rc, body)
    assert b"timed out after 0.2s (it returned after 0.4" in body, body
