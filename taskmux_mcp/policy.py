"""The restart decision: a pure function of a task's config, its counters and an observation."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from .config import RestartPolicy, TaskConfig

MAX_BACKOFF_S = 60.0
STABLE_AFTER_S = 60.0


class Seen(StrEnum):
    """What the monitor observed about a task."""

    EXITED = "exited"
    UNHEALTHY = "unhealthy"
    LAUNCH_FAILED = "launch_failed"
    VANISHED = "vanished"


class Action(StrEnum):
    """What the policy says to do."""

    NOTHING = "nothing"
    RESTART = "restart"
    GIVE_UP = "give_up"


@dataclass(frozen=True)
class Observation:
    """One thing that happened to a task."""

    seen: Seen
    exit_code: int | None = None
    exit_signal: int | None = None
    expected: bool = False


@dataclass(frozen=True)
class Counters:
    """The persisted facts the policy needs."""

    manually_stopped: bool
    restarts: int


@dataclass(frozen=True)
class Decision:
    """The policy's verdict: nothing, restart after delay_s, or give up; with why."""

    action: Action
    reason: str
    delay_s: float = 0.0


def backoff_delay(restart_backoff: float, restarts_so_far: int) -> float:
    """Delay before restart n (n = 0, 1, ...): restart_backoff ** n, at most 60 s; a zero
    base means no delay at all (not 0 ** 0 = 1)."""
    if restart_backoff == 0:
        return 0.0
    try:
        delay = restart_backoff**restarts_so_far
    except OverflowError:
        return MAX_BACKOFF_S
    return min(float(delay), MAX_BACKOFF_S)


def _describe(observation: Observation) -> str:
    if observation.seen is Seen.UNHEALTHY:
        return "health check failing"
    if observation.seen is Seen.LAUNCH_FAILED:
        return "could not be started"
    if observation.seen is Seen.VANISHED:
        return "its window disappeared (tmux server gone?)"
    if observation.exit_signal:
        return f"killed by signal {observation.exit_signal}"
    return f"exited with status {observation.exit_code}"


def decide(task: TaskConfig, counters: Counters, observation: Observation) -> Decision:
    """Apply SPEC §4's restart policy to one observation."""
    why = _describe(observation)
    if counters.manually_stopped or observation.expected:
        return Decision(Action.NOTHING, f"{why}; stopped by a user, not restarted")
    policy = task.restart_policy
    if policy is RestartPolicy.NO:
        return Decision(Action.NOTHING, f'{why}; restart_policy is "no"')
    clean_exit = (
        observation.seen is Seen.EXITED
        and observation.exit_code == 0
        and not observation.exit_signal
    )
    if clean_exit and policy is RestartPolicy.ON_FAILURE:
        return Decision(Action.NOTHING, f"{why}; on-failure does not restart a clean exit")
    if task.max_restarts and counters.restarts >= task.max_restarts:
        return Decision(
            Action.GIVE_UP,
            f"{why}; gave up after {counters.restarts} consecutive restarts "
            f"(max_restarts = {task.max_restarts})",
        )
    delay = backoff_delay(task.restart_backoff, counters.restarts)
    return Decision(Action.RESTART, f"{why}; restart {counters.restarts + 1} in {delay:g}s", delay)


def is_stable(
    *,
    alive: bool,
    has_check: bool,
    healthy: bool,
    started_at: float | None,
    healthy_since: float | None,
    now: float,
) -> bool:
    """True once a run has stayed up (and healthy, where checked) long enough to reset counters."""
    if not alive:
        return False
    since = healthy_since if has_check else started_at
    if has_check and not healthy:
        return False
    return since is not None and now - since >= STABLE_AFTER_S
