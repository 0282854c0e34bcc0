"""Usage limits and transient errors: what becomes of an attempt that ended on the API's
availability rather than on the work. Pure: the time is passed in.

An agent's adapter says why an error result happened (`AgentResult.api_error`): a usage
limit of its account (with when it resets), or a transient failure (overloaded, a server
error, the server throttling, a connection that failed). Retrying cannot mend anything
else (a bad key, a bad request, the task's own budget), so those fail as before.

* A usage limit parks the task (`TaskParked`): it goes back in the queue, holds no slot,
  and starts again at the reset, continuing its session; no other task of its account
  starts before then (the scheduler holds them). With `resume_after_limit` off it fails,
  its reason naming the reset. A limit without a reset time still to come is retried
  like a transient failure, so that it cannot loop.
* A transient failure is retried (`RetryScheduled`) after a capped exponential backoff,
  `retry_base` × 2ⁿ⁻¹ seconds before the n-th retry, at most `retry_cap`, continuing the
  session; after `retries` retries in a row the task fails with the last error.

The daemon owns these retries: Claude Code is started with `CLAUDE_CODE_MAX_RETRIES=0`
(unless the environment says otherwise), so every attempt is one the daemon records and
`orchestra show` lists; see tests/claude_notes.md for what the CLI reports and why.
"""

from __future__ import annotations

from orchestra.shared.protocol import Status
from orchestra.shared.vocab import shorten
from orchestrad import events as ev
from orchestrad.agents import traits
from orchestrad.config import Config
from orchestrad.scheduler import account_of
from orchestrad.state import State, Task

USAGE_LIMIT = "usage limit"

LIMIT_MESSAGE = "Your usage limit has reset. Continue the task from where you stopped."
RETRY_MESSAGE = "The API failed before you finished ({error}). Continue the task from where you stopped."


def backoff(config: Config, retry: int) -> float:
    """Seconds to wait before the `retry`-th retry (1, 2, ...) of a run."""
    return min(config.retry_cap, config.retry_base * 2.0 ** (retry - 1))


def after_error(state: State, task: Task, now: float) -> list[ev.Event] | None:
    """What follows an attempt of `task` that ended with an error result, at `now`: parked
    or retried (their events), failed for good after the last retry (a `TaskFinished`), or
    None when the error is not about the API's availability (the caller fails it as
    before)."""
    if not task.api_error:
        return None
    config = state.config
    detail = _first_line(task.result)
    resumes = traits(task.spec.agent).converses and bool(task.session_id)
    if task.api_error == USAGE_LIMIT and task.resets_at is not None and task.resets_at > now:
        if not config.resume_after_limit:
            reason = (
                f"its account met its usage limit; after the reset `orchestra resume {task.id}` continues it "
                f"(resume_after_limit is off): {detail or 'no message'}"
            )
            return [ev.TaskFinished(task=task.id, outcome=Status.FAILED, reason=reason)]
        account = account_of(state, task) or task.spec.agent
        message = LIMIT_MESSAGE if resumes else ""
        return [ev.TaskParked(task=task.id, until=task.resets_at, reason=USAGE_LIMIT, account=account, message=message, detail=detail)]
    if task.retried >= config.retries:
        if not task.retried:
            reason = f"{task.api_error}, not retried (the retries setting is 0): {detail or 'no message'}"
        else:
            reason = f"{task.api_error} on each of {task.retried + 1} attempts; the last said: {detail or 'no message'}"
        return [ev.TaskFinished(task=task.id, outcome=Status.FAILED, reason=reason)]
    retry = task.retried + 1
    message = RETRY_MESSAGE.format(error=task.api_error) if resumes else ""
    return [
        ev.RetryScheduled(
            task=task.id, attempt=retry + 1, at=now + backoff(config, retry), error=task.api_error, detail=detail, message=message
        )
    ]


def _first_line(text: str, limit: int = 200) -> str:
    line = next((x.strip() for x in text.splitlines() if x.strip()), "")
    return shorten(line, limit)

