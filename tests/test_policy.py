"""The restart policy, table-driven: no tmux, no clock, no I/O."""

from __future__ import annotations

import pytest

from taskmux_mcp.config import RestartPolicy, TaskConfig
from taskmux_mcp.policy import (
    Action,
    Counters,
    Observation,
    Seen,
    backoff_delay,
    decide,
    is_stable,
)


def task(policy: str = "on-failure", max_restarts: int = 5, backoff: float = 2.0) -> TaskConfig:
    """A task with the given policy knobs."""
    return TaskConfig(
        name="t",
        command="true",
        restart_policy=RestartPolicy(policy),
        max_restarts=max_restarts,
        restart_backoff=backoff,
    )


EXIT0 = Observation(Seen.EXITED, exit_code=0)
EXIT1 = Observation(Seen.EXITED, exit_code=1)
SEGV = Observation(Seen.EXITED, exit_signal=11)
UNHEALTHY = Observation(Seen.UNHEALTHY)
LAUNCH = Observation(Seen.LAUNCH_FAILED)
GONE = Observation(Seen.VANISHED)
OURS = Observation(Seen.EXITED, exit_signal=2, expected=True)

FREE = Counters(manually_stopped=False, restarts=0)
STOPPED = Counters(manually_stopped=True, restarts=0)


@pytest.mark.parametrize(
    ("policy", "counters", "observation", "action"),
    [
        ("no", FREE, EXIT1, Action.NOTHING),
        ("no", FREE, SEGV, Action.NOTHING),
        ("no", FREE, UNHEALTHY, Action.NOTHING),
        ("no", FREE, EXIT0, Action.NOTHING),
        ("on-failure", FREE, EXIT0, Action.NOTHING),
        ("on-failure", FREE, EXIT1, Action.RESTART),
        ("on-failure", FREE, SEGV, Action.RESTART),
        ("on-failure", FREE, UNHEALTHY, Action.RESTART),
        ("on-failure", FREE, LAUNCH, Action.RESTART),
        ("on-failure", FREE, GONE, Action.RESTART),
        ("on-failure", FREE, OURS, Action.NOTHING),
        ("always", FREE, EXIT0, Action.RESTART),
        ("always", FREE, EXIT1, Action.RESTART),
        ("always", FREE, OURS, Action.NOTHING),
        ("always", STOPPED, EXIT1, Action.NOTHING),
        ("always", STOPPED, EXIT0, Action.NOTHING),
        ("on-failure", STOPPED, UNHEALTHY, Action.NOTHING),
        ("on-failure", STOPPED, GONE, Action.NOTHING),
    ],
)
def test_decisions(
    policy: str, counters: Counters, observation: Observation, action: Action
) -> None:
    assert decide(task(policy), counters, observation).action is action


@pytest.mark.parametrize(
    ("backoff", "restarts", "delay"),
    [(2.0, 0, 1.0), (2.0, 1, 2.0), (2.0, 3, 8.0), (2.0, 6, 60.0), (3.0, 2, 9.0), (1.0, 9, 1.0),
     (10.0, 400, 60.0), (0.0, 0, 0.0), (0.0, 2, 0.0)],
)  # fmt: skip
def test_backoff_is_exponential_and_capped(backoff: float, restarts: int, delay: float) -> None:
    assert backoff_delay(backoff, restarts) == delay


def test_delays_grow_until_giving_up() -> None:
    config = task("on-failure", max_restarts=3, backoff=2.0)
    delays = []
    for restarts in range(4):
        decision = decide(config, Counters(False, restarts), EXIT1)
        delays.append((decision.action, decision.delay_s))
    assert delays == [
        (Action.RESTART, 1.0),
        (Action.RESTART, 2.0),
        (Action.RESTART, 4.0),
        (Action.GIVE_UP, 0.0),
    ]
    assert "max_restarts = 3" in decide(config, Counters(False, 3), EXIT1).reason


def test_zero_max_restarts_means_no_limit() -> None:
    decision = decide(task("always", max_restarts=0), Counters(False, 10_000), EXIT1)
    assert decision.action is Action.RESTART and decision.delay_s == 60.0


def test_reasons_say_what_happened() -> None:
    assert "signal 11" in decide(task(), FREE, SEGV).reason
    assert "status 1" in decide(task(), FREE, EXIT1).reason
    assert "health" in decide(task(), FREE, UNHEALTHY).reason
    assert "stopped by a user" in decide(task(), STOPPED, EXIT1).reason


@pytest.mark.parametrize(
    ("alive", "has_check", "healthy", "started", "healthy_since", "now", "stable"),
    [
        (True, False, False, 0.0, None, 59.0, False),
        (True, False, False, 0.0, None, 60.0, True),
        (False, False, False, 0.0, None, 600.0, False),
        (True, True, True, 0.0, 30.0, 80.0, False),
        (True, True, True, 0.0, 30.0, 90.0, True),
        (True, True, False, 0.0, 30.0, 900.0, False),
        (True, True, True, 0.0, None, 900.0, False),
    ],
)
def test_counter_reset_after_a_stable_minute(
    alive: bool,
    has_check: bool,
    healthy: bool,
    started: float,
    healthy_since: float | None,
    now: float,
    stable: bool,
) -> None:
    assert (
        is_stable(
            alive=alive,
            has_check=has_check,
            healthy=healthy,
            started_at=started,
            healthy_since=healthy_since,
            now=now,
        )
        is stable
    )
