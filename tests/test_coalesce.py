"""Shared readings and batched requests: few expensive calls for many concurrent actions."""

from __future__ import annotations

import threading
import time

import anyio
import pytest
from support import Workspace

from taskmux_mcp.coalesce import Batched, Coalesced
from taskmux_mcp.errors import TmuxError


def test_a_reading_serves_the_callers_who_asked_while_the_previous_one_ran() -> None:
    asked = []
    began: list[float] = []

    def read() -> int:
        began.append(time.monotonic())
        if len(began) == 1:  # the first reading lasts until every other caller has asked
            deadline = time.monotonic() + 5
            while len(asked) < 8 and time.monotonic() < deadline:
                time.sleep(0.001)
        return len(began)

    shared = Coalesced(read)
    got: list[tuple[float, int]] = []

    def caller() -> None:
        when = time.monotonic()
        asked.append(when)
        got.append((when, shared.get()))

    threads = [threading.Thread(target=caller) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    values = sorted(v for _, v in got)
    assert values[0] == 1 and len(began) <= 3  # 8 callers, at most 3 readings
    assert all(began[value - 1] >= when for when, value in got)  # each from a reading begun later
    later = time.monotonic()
    assert shared.get() == len(began) and began[-1] >= later  # never a reading from before


def test_async_callers_share_readings_and_wait_without_holding_threads() -> None:
    began: list[float] = []
    running: list[int] = []
    most = [0]

    def read() -> int:
        running.append(1)
        most[0] = max(most[0], len(running))
        began.append(time.monotonic())
        time.sleep(0.05)
        running.pop()
        return len(began)

    shared = Coalesced(read)
    in_threads: list[int] = []  # calls that went to a worker thread
    get_from = shared._get_from

    def counted(asked: float) -> int:
        in_threads.append(1)
        return get_from(asked)

    shared._get_from = counted  # type: ignore[method-assign]
    got: list[tuple[float, int]] = []

    async def caller(delay: float) -> None:
        await anyio.sleep(delay)
        when = time.monotonic()
        got.append((when, await shared.aget()))

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for i in range(200):  # more callers than the worker threads (40)
                group.start_soon(caller, (i % 10) * 0.01)

    anyio.run(main)
    assert len(got) == 200 and len(began) <= 6 and most[0] == 1  # a few readings, one at a time
    assert len(in_threads) == len(began)  # a worker thread per reading, none per waiter
    assert all(began[value - 1] >= when for when, value in got)  # each from a reading begun later


def test_an_async_reading_that_fails_leaves_no_waiter_stranded() -> None:
    calls: list[int] = []

    def read() -> int:
        calls.append(1)
        time.sleep(0.02)
        if len(calls) == 1:
            raise OSError("tmux went away")
        return len(calls)

    shared = Coalesced(read)
    outcomes: list[object] = []

    async def caller() -> None:
        try:
            outcomes.append(await shared.aget())
        except OSError as exc:
            outcomes.append(str(exc))

    async def main() -> None:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                for _ in range(5):
                    group.start_soon(caller)

    anyio.run(main)
    assert outcomes.count("tmux went away") == 1  # only the caller whose reading failed
    assert all(o == 2 for o in outcomes if o != "tmux went away")  # the others read again


def test_requests_made_at_once_go_in_one_batch_and_failures_reach_each_waiter() -> None:
    batches: list[list[int]] = []

    async def handle(batch: list[int]) -> list[int | BaseException]:
        batches.append(batch)
        await anyio.sleep(0.01)
        return [ValueError(f"bad {n}") if n == 3 else n * 10 for n in batch]

    batched: Batched[int, int] = Batched(handle)
    results: dict[int, object] = {}

    async def one(n: int) -> None:
        try:
            results[n] = await batched.submit(n)
        except ValueError as exc:
            results[n] = str(exc)

    async def main() -> None:
        async with anyio.create_task_group() as group:
            for n in range(6):
                group.start_soon(one, n)

    anyio.run(main)
    assert results == {0: 0, 1: 10, 2: 20, 3: "bad 3", 4: 40, 5: 50}
    assert batches == [[0, 1, 2, 3, 4, 5]]


def test_a_broken_batch_handler_fails_every_waiter_instead_of_hanging() -> None:
    async def handle(batch: list[int]) -> list[int | BaseException]:
        raise RuntimeError("handler broke")

    batched: Batched[int, int] = Batched(handle)

    async def main() -> list[str]:
        seen: list[str] = []

        async def one(n: int) -> None:
            with pytest.raises(RuntimeError, match="handler broke"):
                await batched.submit(n)
            seen.append("raised")

        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                for n in range(3):
                    group.start_soon(one, n)
        return seen

    assert anyio.run(main) == ["raised"] * 3


def test_tmux_commands_after_a_failing_one_still_run(project: Workspace) -> None:
    project.write('[tasks.a]\ncommand = "sleep 1000"\n')
    sup = project.open()
    assert anyio.run(lambda: sup.start(timeout=10)).ok
    pane = anyio.run(sup.backend.snapshot).panes["a"].pane_id
    results = sup.backend._run_commands(
        [
            ["set-option", "-w", "-t", pane, "@first", "1"],
            ["set-option", "-w", "-t", "%999999", "@nowhere", "1"],
            ["set-option", "-w", "-t", pane, "@third", "3"],
        ]
    )
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], TmuxError) and "set-option" in str(results[1])
    shown = sup.backend.run("show-options", "-w", "-t", pane)
    assert "@first 1" in shown and "@third 3" in shown
    anyio.run(sup.stop)


def test_a_cancelled_first_caller_strands_no_one() -> None:
    async def handle(batch: list[int]) -> list[int | BaseException]:
        await anyio.sleep(0.01)
        return [n * 2 for n in batch]

    batched: Batched[int, int] = Batched(handle)
    got: dict[int, int] = {}

    async def one(n: int) -> None:
        got[n] = await batched.submit(n)

    async def cancelled_first() -> None:
        with anyio.CancelScope() as scope:
            scope.cancel()  # cancelled at its very first checkpoint, as the batch's leader
            await one(0)

    async def main() -> None:
        with anyio.fail_after(5):
            async with anyio.create_task_group() as group:
                group.start_soon(cancelled_first)
                group.start_soon(one, 1)
                group.start_soon(one, 2)

    anyio.run(main)
    assert got[1] == 2 and got[2] == 4  # the others were not left waiting
