"""What a refused reservation answers: the 429 text in OpenAI's wording, ``retry-after`` and OpenAI's
``x-ratelimit-*`` headers (also sent on every admitted request), and the refusing limit in a few words
for the request's log line. No I/O: everything comes from the limits and the store's answer."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from .errors import BudgetExceeded, ProxyError, RateLimited
from .limits import Limit, go_duration
from .store.base import Admitted, CounterValue, Denied
from .units import human_amount


def denial(team: str, model: str, lims: Sequence[Limit], d: Denied, now: float) -> ProxyError:
    """The error for a refused reservation, carrying the refusing limit (``err.limit``) for the log line."""
    lim = next(x for x in lims if x.key == d.hold.key)
    if lim.budget is not None:
        err = _budget_refusal(team, lim, d, now)
    else:
        err = _rate_refusal(team, model, lims, lim, d, now)
    err.limit = refusal_limit(lim, d)
    return err


def _retry_after(wait: float) -> dict[str, str]:
    return {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(int(wait * 1000))}


def _wait(lim: Limit, now: float) -> float:
    return max(lim.window_end - now, 0.0) if lim.window or lim.rolling else 1.0


def _budget_refusal(team: str, lim: Limit, d: Denied, now: float) -> ProxyError:
    assert lim.budget is not None
    wait = _wait(lim, now)
    what = f"{lim.budget.usd} USD" if lim.unit == "usd" else f"{lim.limit} tokens"

    def amount(v: int) -> str:
        return f"{v / 1e6:.6f} USD" if lim.unit == "usd" else f"{v} tokens"

    return BudgetExceeded(
        "You exceeded your current quota, please check your plan and billing details. "
        f"{_whose(lim, team)} for {_period(lim)} ({what}) cannot cover this "
        f"request: used {amount(d.used)}, held by requests in flight {amount(d.reserved)}, this request "
        f"needs up to {amount(d.hold.amount)}. The budget {_renews(lim)} in {go_duration(wait)}.",
        headers=_retry_after(wait),
        downgrade_to=lim.budget.downgrade_to,
    )


def _period(lim: Limit) -> str:
    return f"any {lim.rolling}" if lim.rolling else f"this {lim.window or 'session'}"


def _renews(lim: Limit) -> str:
    return "frees what was used longest ago" if lim.rolling else "renews"


def _whose(lim: Limit, team: str) -> str:
    """Whose budget it is, as a refusal names it: the level and the entity (``The budget of end user 'u-1' in
    team 'search'``)."""
    if lim.scope == "org":
        return "The organisation's budget"
    if lim.scope in ("team", "key"):
        return f"The {lim.scope} budget of team '{team}'"
    return f"The budget of {_LEVEL[lim.scope]} '{lim.entity}' in team '{team}'"


_LEVEL = {"end_user": "end user", "tag": "tag", "model": "model", "session": "session"}


def _rate_refusal(team: str, model: str, lims: Sequence[Limit], lim: Limit, d: Denied, now: float) -> ProxyError:
    # OpenAI's wording ("Rate limit reached for M in organization O on ..."), the team in place of the
    # organization, so that clients matching on it (LiteLLM: "rate limit") recognise a rate limit.
    if lim.scope == "team":
        who = f"team '{team}'"
    elif lim.scope == "key":
        who = f"team '{team}' (this key's own limit)"
    elif lim.scope == "org":
        who = "the organisation"
    else:
        who = f"team '{team}' (the limit of {_LEVEL[lim.scope]} '{lim.entity}')"
    if lim.unit == "concurrent":
        return RateLimited(
            f"Rate limit reached for {model} in {who} on concurrent requests: Limit {lim.limit}, "
            f"In flight {d.reserved}. Too many concurrent requests; please try again in 1s.",
            kind="requests",
            headers={"retry-after": "1", "retry-after-ms": "1000"},
        )
    wait = _wait(lim, now)
    per = "tokens per min (TPM)" if lim.unit == "tokens" else "requests per min (RPM)"
    kind = "tokens" if lim.unit == "tokens" else "requests"
    headers = _retry_after(wait) | rate_limit_headers(lims, None, now, denied=d)
    used, asked = d.used + d.reserved, d.hold.amount
    if asked > lim.limit:
        headers["x-should-retry"] = "false"  # waiting cannot help
        return RateLimited(
            f"Request too large for {model} in {who} on {per}: Limit {lim.limit}, Requested {asked}. "
            "The input or output tokens must be reduced in order to run successfully.",
            kind=kind,
            headers=headers,
        )
    return RateLimited(
        f"Rate limit reached for {model} in {who} on {per}: Limit {lim.limit}, Used {used}, "
        f"Requested {asked}. Please try again in {go_duration(wait)}.",
        kind=kind,
        headers=headers,
    )


def rate_limit_headers(
    lims: Sequence[Limit], admitted: Admitted | None, now: float, *, denied: Denied | None = None
) -> dict[str, str]:
    """OpenAI's x-ratelimit-* headers for the team's per-minute limits, from the reserve's answer."""
    values: Mapping[str, CounterValue] = admitted.values if admitted is not None else {}
    out: dict[str, str] = {}
    for lim in lims:
        if lim.scope != "team" or lim.window != "minute" or lim.budget is not None:
            continue
        kind = "tokens" if lim.unit == "tokens" else "requests"
        v = values.get(lim.key)
        if denied is not None and denied.hold.key == lim.key:
            v = CounterValue(denied.used, denied.reserved)
        out[f"x-ratelimit-limit-{kind}"] = str(lim.limit)
        if v is not None:
            out[f"x-ratelimit-remaining-{kind}"] = str(max(lim.limit - v.used - v.reserved, 0))
        out[f"x-ratelimit-reset-{kind}"] = go_duration(max(lim.window_end - now, 0.0))
    return out


def refusal_limit(lim: Limit, d: Denied) -> str:
    """The limit that refused, in a few words: ``budget team day tokens used 1.9M/2M held 40K asked 120K``."""

    def h(v: int) -> str:
        return human_amount(v, lim.unit)

    scope = f"{lim.scope} {lim.entity}" if lim.scope in _LEVEL else lim.scope
    if lim.unit == "concurrent":
        return f"concurrent {scope} {d.reserved}/{lim.limit} in flight"
    period = lim.window or f"rolling {lim.rolling}"
    what = f"budget {scope} {period} {lim.unit}" if lim.budget is not None else f"{scope} "
    if lim.budget is None:
        what += "tpm" if lim.unit == "tokens" else "rpm"
    return f"{what} used {h(d.used)}/{h(lim.limit)} held {h(d.reserved)} asked {h(d.hold.amount)}"
