"""The request budget: one connection's calls per minute shared by every user in the process, 429s pause it."""

from __future__ import annotations

import asyncio
import time

import pytest

from airflow_provider_jobprogress.core.budget import BURST_FRACTION, BudgetRegistry, RequestBudget, urgent


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def send(budget: RequestBudget, clock: Clock) -> float:
    """One required call, the clock moved on to its turn; the seconds it waited."""
    start = clock.now
    while (wait := budget.try_acquire()) > 0:
        clock.now += wait
    return clock.now - start


def sent_within(budget: RequestBudget, clock: Clock, seconds: float, *, window: float = 60.0) -> int:
    """Drive required calls as fast as the budget allows for ``seconds``; the most sent in any ``window``."""
    times: list[float] = []
    end = clock.now + seconds
    while clock.now < end:
        send(budget, clock)
        times.append(clock.now)
    most, first = 0, 0
    for last, moment in enumerate(times):
        while times[first] <= moment - window:
            first += 1
        most = max(most, last - first + 1)
    return most


def test_required_calls_never_pass_the_limit_in_any_sliding_minute() -> None:
    clock = Clock()
    budget = RequestBudget("itwin_default", 450, clock=clock)
    most = sent_within(budget, clock, 600)
    assert 450 <= most <= 450 * (1 + BURST_FRACTION)
    assert most < 500, "under Bentley's Trial limit of 500 a minute, however the vendor's window slides"


def test_an_hourly_limit_holds_too() -> None:
    clock = Clock()
    budget = RequestBudget("itwin_default", 450, 4500, clock=clock)
    most = sent_within(budget, clock, 3 * 3600, window=3600)
    assert 4500 <= most < 5000


def test_a_quiet_budget_lets_a_burst_go_at_once_then_paces() -> None:
    clock = Clock()
    budget = RequestBudget("c", 600, clock=clock)  # 10 a second, bursts of 50
    waits = [send(budget, clock) for _ in range(60)]
    assert waits[:50] == [0.0] * 50
    assert waits[50:] == pytest.approx([0.1] * 10)


def test_optional_calls_only_from_the_half_kept_spare() -> None:
    clock = Clock()
    budget = RequestBudget("c", 600, clock=clock)
    taken = 0
    while budget.try_take():
        taken += 1
    assert taken == 26  # 50 in the bucket; optional calls stop while half (25) of it is left
    assert budget.try_acquire() == 0.0, "the half kept back serves required calls at once"
    assert budget.counts.optional_skipped == 1


def test_a_429_pauses_every_caller_once_and_paces_what_comes_back() -> None:
    clock = Clock()
    budget = RequestBudget("c", 600, clock=clock)
    assert budget.pause(30) is True
    assert budget.pause(30) is False, "the other waits' 429s of the same burst add nothing"
    assert budget.pause(10) is False
    assert budget.counts.pauses == 1
    assert budget.counts.rate_limited == 3
    assert budget.paused_for() == 30
    waits = [send(budget, clock) for _ in range(3)]
    assert waits == pytest.approx([30.1, 0.1, 0.1]), "empty after the pause: no burst on the vendor"
    assert not budget.try_take()


def test_a_429_answered_a_little_later_stretches_the_same_pause() -> None:
    clock = Clock()
    budget = RequestBudget("c", 600, clock=clock)
    assert budget.pause(1.0) is True
    clock.now += 0.5
    assert budget.pause(1.0) is False
    assert budget.counts.pauses == 1
    assert budget.paused_for() == pytest.approx(1.0)
    clock.now += 2
    assert budget.pause(1.0) is True, "after the pause, a new burst is a new pause"


def test_the_vendors_remaining_calls_cap_the_bucket() -> None:
    clock = Clock()
    budget = RequestBudget("c", 600, clock=clock)
    budget.observe_remaining(2)
    assert [send(budget, clock) for _ in range(3)] == pytest.approx([0.0, 0.0, 0.1])


def test_a_summary_once_a_minute_with_what_happened() -> None:
    clock = Clock()
    budget = RequestBudget("itwin_default", 450, 4500, clock=clock)
    for _ in range(10):
        send(budget, clock)
    budget.pause(5)
    assert budget.harvest() is None
    clock.now += 60
    harvest = budget.harvest()
    assert harvest is not None
    line = budget.describe(*harvest, waits=7)
    assert "connection 'itwin_default': 10 calls/min (budget 450/min, 4500/h)" in line
    assert "7 waits" in line
    assert "1 answered 429" in line
    assert "paused 5 s" in line
    assert budget.harvest() is None, "at most once a minute"


def test_registry_one_budget_per_connection_following_edits() -> None:
    registry = BudgetRegistry()
    first = registry.get("olconnect_default", 1200)
    assert registry.get("olconnect_default", 1200) is first
    assert registry.get("olconnect_default", 600) is first
    assert first.per_minute == 600
    assert registry.get("other", 1200) is not first


@pytest.mark.parametrize("per_minute", [0, -1, float("nan")])
def test_a_budget_must_be_positive(per_minute: float) -> None:
    with pytest.raises(ValueError, match="positive"):
        RequestBudget("c", per_minute)


#: counts of calls left no vendor sends: hundreds of digits (float() overflows), past Python's int-parsing limit,
#: signed, non-ASCII digits, a fraction
ABSURD_COUNTS = ["9" * 400, "9" * 5000, "-3", "+7", "١٢", "1.5", "1e9", ""]


@pytest.mark.parametrize("value", ABSURD_COUNTS)
def test_an_absurd_count_of_calls_left_is_ignored_not_raised(value: str) -> None:
    """A proxy or a broken vendor sends an ``iTwinPlatform-RateLimit-RemainingCalls`` no client has left: the
    answer still counts as a call, the header says nothing (before: OverflowError, ValueError out of the
    transport, on a worker and in the triggerer, where the listing's error reached every wait)."""
    from airflow_provider_jobprogress.core.session import spend
    from airflow_provider_jobprogress.vendors.itwin import REMAINING_CALLS, ITwinApi

    api = ITwinApi(client_id="c", client_secret="s")
    assert api.calls_remaining({REMAINING_CALLS: value}) is None
    clock = Clock()
    budget = RequestBudget("itwin_default", 600, clock=clock)
    spend(budget, api, 200, {REMAINING_CALLS: value})
    assert [send(budget, clock) for _ in range(50)] == [0.0] * 50, "the bucket untouched"


def test_a_plausible_count_of_calls_left_is_read() -> None:
    from airflow_provider_jobprogress.vendors.itwin import REMAINING_CALLS, ITwinApi

    api = ITwinApi(client_id="c", client_secret="s")
    assert api.calls_remaining({REMAINING_CALLS: " 42 "}) == 42
    assert api.calls_remaining({REMAINING_CALLS: "0"}) == 0


def test_a_huge_count_given_to_the_budget_caps_nothing() -> None:
    clock = Clock()
    budget = RequestBudget("c", 600, clock=clock)
    budget.observe_remaining(10**400)
    assert [send(budget, clock) for _ in range(50)] == [0.0] * 50


async def test_calls_queued_before_a_429_are_paced_from_the_pauses_end() -> None:
    """80 calls on a budget of 10 a second (bursts of 50): 50 go, 30 queue, then a 429 pauses the connection 1 s.
    Before: every call whose turn fell within the pause went at its end at once (about 10 together)."""
    budget = RequestBudget("c", 600)
    released: list[float] = []

    async def call() -> None:
        await budget.aacquire()
        released.append(time.monotonic())

    calls = [asyncio.ensure_future(call()) for _ in range(80)]
    await asyncio.sleep(0.05)
    paused_at = time.monotonic()
    budget.pause(1.0)
    await asyncio.gather(*calls)
    after = sorted(t - paused_at for t in released[50:])
    assert after[0] >= 1.0, "nothing goes during the pause"
    bunched = max(sum(1 for t in after if start <= t < start + 0.05) for start in after)
    assert bunched <= 3, f"paced at 10 a second from the pause's end, not released together: {after}"
    assert after[-1] >= 1.0 + 2.0, "30 calls at 10 a second after the pause"


async def test_an_urgent_call_takes_the_next_turn_ahead_of_queued_polls() -> None:
    """A cancel or the last look at a deadline must not queue behind thousands of polls (before: FIFO; 5,000
    queued polls on a 1,200/min budget put a cancel 245 s away, far past on_kill's 25 s)."""
    budget = RequestBudget("c", 600)  # 10 a second, bursts of 50
    order: list[str] = []

    async def call(name: str) -> None:
        await budget.aacquire()
        order.append(name)

    polls = [asyncio.ensure_future(call(f"poll{i}")) for i in range(70)]
    await asyncio.sleep(0.01)
    started = time.monotonic()
    with urgent():  # as hook.acancel and the trigger's last look run
        await asyncio.wait_for(call("cancel"), timeout=1.0)
    assert time.monotonic() - started < 0.5, "the next turn, not after 20 queued polls"
    assert order.index("cancel") <= 52, order
    await asyncio.gather(*polls)


async def test_turns_of_calls_cancelled_while_queued_are_given_back() -> None:
    """Waits whose calls were queued end (deadline, killed): nothing was sent, so nothing is spent (before: the
    budget idled for every cancelled call's turn)."""
    budget = RequestBudget("c", 60)  # 1 a second, bursts of 5
    calls = [asyncio.ensure_future(budget.aacquire()) for _ in range(30)]
    await asyncio.sleep(0.01)
    for c in calls:
        c.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    sent = sum(1 for c in calls if not c.cancelled())
    assert sent == 5, "the burst went; the rest were cancelled while queued"
    started = time.monotonic()
    await asyncio.wait_for(budget.aacquire(), timeout=5.0)
    assert time.monotonic() - started < 1.5, "the next call waits one turn at most, not 25 s"
    assert budget.counts.calls == 6


async def test_raised_limits_reach_a_call_already_queued() -> None:
    """A user raises requests_per_minute (1/min -> 600/min) while a call queues: the call first in line waits on
    a timer set from the old rate; the new limits wake it, and it goes within a turn of the new rate."""
    budget = RequestBudget("c", 1)  # bursts of 1
    await budget.aacquire()  # the burst
    waiter = asyncio.ensure_future(budget.aacquire())
    await asyncio.sleep(0.05)
    budget.set_limits(600)
    try:
        await asyncio.wait_for(asyncio.shield(waiter), timeout=5)
    finally:
        waiter.cancel()
