"""The retry policy: classify an attempt's outcome and say what happens next.

Pure functions of the outcome and `now`. Delays are tenacity's exponential wait plus random
jitter, capped at the policy's `max`; the next attempt time is persisted by the engine, so a
30-minute backoff survives restarts (the retry runs on a later tick).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import TYPE_CHECKING

from agentjobs.clock import iso

if TYPE_CHECKING:
    import random

    from agentjobs.spec import OutcomeMatch, RetryPolicy


class Outcome(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMEOUT = "timeout"
    SILENCE = "silence"
    VERIFY_FAILED = "verify_failed"
    LOST = "lost"
    INTERRUPTED = "interrupted"
    SKIPPED = "skipped"
    RATE_LIMITED = "rate_limited"
    BUDGET = "budget"  # stopped when it spent more than its cap (never retried)
    CANCELLED = "cancelled"  # stopped by a person (`agentjobs cancel`): the run ends here
    AWAITING_REVIEW = "awaiting_review"  # succeeded; a person decides what lands (review.py)
    NO_CHANGE = "no_change"  # "succeeded" having changed nothing (`expect.changes`), or hollow


class Next(StrEnum):
    DONE = "done"  # succeeded: nothing more
    RETRY = "retry"  # another attempt at `at`
    DEAD_LETTER = "dead_letter"  # exhausted or permanent


# Outcomes that are not the job's fault: retried without using up an attempt.
NOT_COUNTED = frozenset({Outcome.INTERRUPTED, Outcome.RATE_LIMITED})

# The longest an agent's usage limit holds its jobs (a weekly limit, plus the spread below).
MAX_HOLD_S = 7 * 86400.0 + 60.0


def failures_after(failures: int, outcome: str) -> int:
    """The failed attempts of a run once an attempt with `outcome` is counted: an interrupted,
    rate-limited or successful attempt uses up none of the policy's attempts."""
    counted = outcome != Outcome.SUCCEEDED and outcome not in NOT_COUNTED
    return failures + (1 if counted else 0)


@dataclass(frozen=True, slots=True)
class Decision:
    next: Next
    at: datetime | None = None  # when the next attempt may start
    counts: bool = True  # whether the finished attempt used up one of `attempts`
    reason: str = ""


def matches(match: OutcomeMatch, outcome: Outcome, exit_code: int | None, output: str) -> bool:
    if match.outcome is not None:
        return match.outcome == outcome.value
    if match.exit_code is not None:
        return exit_code == match.exit_code and outcome == Outcome.FAILED
    if match.output is not None:
        return re.search(match.output, output, re.MULTILINE) is not None
    return False


def delay(policy: RetryPolicy, failures: int) -> float:
    """Seconds to wait after the `failures`-th counted failure (1-based)."""
    from tenacity import RetryCallState, wait_exponential, wait_random

    backoff = policy.backoff
    wait = wait_exponential(
        multiplier=backoff.initial, exp_base=backoff.multiplier, max=backoff.max
    )
    if backoff.jitter > 0:
        wait = wait + wait_random(0, backoff.jitter)  # type: ignore[assignment]
    state = RetryCallState(None, None, (), {})  # type: ignore[arg-type]
    state.attempt_number = failures
    return float(min(wait(state), backoff.max))


def decide(
    policy: RetryPolicy,
    outcome: Outcome,
    *,
    exit_code: int | None,
    output: str,
    attempts_used: int,
    now: datetime,
) -> Decision:
    """What follows an attempt. `attempts_used` counts this attempt if it counts."""
    if outcome == Outcome.SUCCEEDED:
        return Decision(Next.DONE, reason="succeeded")
    if outcome == Outcome.CANCELLED:  # a person's decision: never retried, never dead-lettered
        return Decision(Next.DONE, counts=False, reason="cancelled: never retried")
    if outcome == Outcome.AWAITING_REVIEW:  # done until a person decides (`agentjobs review`)
        return Decision(Next.DONE, counts=False, reason="awaiting review")
    if outcome in NOT_COUNTED:
        return Decision(Next.RETRY, now, counts=False, reason=f"{outcome.value}: not counted")
    for match in policy.never_on:
        if matches(match, outcome, exit_code, output):
            return Decision(Next.DEAD_LETTER, reason=f"permanent failure ({_describe(match)})")
    if policy.retry_on and not any(matches(m, outcome, exit_code, output) for m in policy.retry_on):
        return Decision(Next.DEAD_LETTER, reason=f"{outcome.value} is not in retry_on")
    if attempts_used >= policy.attempts:
        return Decision(
            Next.DEAD_LETTER, reason=f"{attempts_used} of {policy.attempts} attempts used"
        )
    wait = delay(policy, attempts_used)
    return Decision(
        Next.RETRY,
        now + timedelta(seconds=wait),
        reason=f"attempt {attempts_used} of {policy.attempts} failed",
    )


def _describe(match: OutcomeMatch) -> str:
    if match.outcome is not None:
        return f"never_on {match.outcome}"
    if match.exit_code is not None:
        return f"never_on exit code {match.exit_code}"
    return f"never_on output /{match.output}/"


def conclude(
    policy: RetryPolicy,
    outcome: Outcome,
    *,
    exit_code: int | None,
    output: str,
    failures: int,
    attempt: int,
    now: datetime,
    permanent: bool = False,
    error: str | None = None,
    reset_at: datetime | None = None,
    job_deleted: bool = False,
    rng: random.Random | None = None,
) -> Decision:
    """`decide`, then the rules that overrule it: an error the agent called permanent is never
    retried; a usage limit retries at the reset the agent reported (spread over a minute, so the
    jobs it held do not all start at once), else after the backoff; a deleted job's run ends in
    the dead-letter queue. `failures`: the run's counted failures before this attempt."""
    decision = decide(
        policy,
        outcome,
        exit_code=exit_code,
        output=output,
        attempts_used=failures_after(failures, outcome),
        now=now,
    )
    if permanent and decision.next == Next.RETRY:
        decision = dataclasses.replace(
            decision, next=Next.DEAD_LETTER, at=None, reason=f"a retry cannot fix this: {error}"
        )
    if outcome == Outcome.RATE_LIMITED and decision.next == Next.RETRY:
        import random as default_rng

        spread = (rng or default_rng).uniform(0, 60)
        if reset_at is not None and reset_at > now:
            until = reset_at + timedelta(seconds=spread)
        else:
            until = now + timedelta(seconds=delay(policy, max(1, attempt)))
        decision = dataclasses.replace(
            decision, at=until, reason=f"usage limit: retry at {iso(until)}"
        )
    if job_deleted and decision.next == Next.RETRY:
        decision = dataclasses.replace(
            decision, next=Next.DEAD_LETTER, reason="the job was deleted"
        )
    return decision


def longest_wait(last_outcome: str | None, policy: RetryPolicy) -> float:
    """The longest a retry can be meant to wait: the policy's max backoff, or for a usage limit
    (the reset time an agent reported) MAX_HOLD_S."""
    if last_outcome == Outcome.RATE_LIMITED:
        return MAX_HOLD_S
    return float(policy.backoff.max)
