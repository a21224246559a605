"""The earnings floor: engaged hours x the hourly minimum, topped up once per agent and week.

Engaged time is built directly for a past week: Offer rows (created_at, which is
auto_now_add, is backdated with .update()) and Assignment rows (started_at,
ended_at). Earnings "earned that week" are Earning rows backdated the same way.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from core import jobs
from dispatch import floor as dispatch_floor
from dispatch import selectors as dispatch_selectors
from dispatch.models import Assignment, Offer
from marketplace.models import Agent, BotIntegration, Conversation
from payouts.models import Earning, PayPolicy, Transfer
from payouts.services import ledger, sweeper

from ..conftest import wait_for
from .conftest import balance, ledger_sums_to_zero, onboard

MONDAY = date(2024, 3, 4)  # a Monday, long finished
START = datetime(2024, 3, 4, tzinfo=UTC)
END = START + timedelta(days=7)
HOUR = 3600


def at(day: int, hour: int, minute: int = 0, second: int = 0) -> datetime:
    """A moment of the week of MONDAY: day 0 is Monday, -1 the Sunday before, 7 the next Monday."""
    return START + timedelta(days=day, hours=hour, minutes=minute, seconds=second)


@dataclass
class Work:
    """Builds an agent's history directly in the database."""

    integration: BotIntegration
    counter: itertools.count = field(default_factory=lambda: itertools.count(1))

    def conversation(self) -> Conversation:
        return Conversation.objects.create(
            integration=self.integration,
            external_id=f"worked-{next(self.counter)}",
            status=Conversation.Status.RESOLVED,
            queue_key=timezone.now(),
        )

    def assignment(self, agent: Agent, started: datetime, ended: datetime | None) -> Assignment:
        return Assignment.objects.create(
            conversation=self.conversation(),
            agent=agent,
            pay_amount=400,
            pay_currency=settings.PLATFORM_CURRENCY,
            started_at=started,
            ended_at=ended,
            end_reason="resolved" if ended else "",
        )

    def offer(
        self, agent: Agent, created: datetime, *, responded: datetime | None = None, expires: datetime | None = None
    ) -> Offer:
        offer = Offer.objects.create(
            conversation=self.conversation(),
            agent=agent,
            state=Offer.State.DECLINED if responded else Offer.State.EXPIRED,
            # An answered offer was answered before it expired.
            expires_at=expires or max(created + timedelta(seconds=20), responded or created),
            responded_at=responded,
            pay_amount=400,
            pay_currency=settings.PLATFORM_CURRENCY,
        )
        Offer.objects.filter(pk=offer.pk).update(created_at=created)  # auto_now_add: backdate after create
        return offer

    def earned(
        self, agent: Agent, amount: int, created: datetime, *, kind: str = "resolution", state: str = "released"
    ) -> Earning:
        earning = Earning.objects.create(
            agent=agent,
            kind=kind,
            amount=amount,
            currency=settings.PLATFORM_CURRENCY,
            state=state,
            payable_at=created,
            released_at=created if state == "released" else None,
            week_start=(created - timedelta(days=created.weekday())).date() if kind == "floor_topup" else None,
        )
        Earning.objects.filter(pk=earning.pk).update(created_at=created)
        return earning

    def two_hours(self, agent: Agent) -> None:
        """Two engaged hours in the week of MONDAY: 1.5 h of overlapping conversations, then a 30 min offer."""
        self.offer(agent, at(1, 10), responded=at(1, 10, 0, 30))  # accepted: then the conversation
        self.assignment(agent, at(1, 10, 0, 30), at(1, 11))
        self.assignment(agent, at(1, 10, 30), at(1, 11, 30))  # a second conversation alongside
        self.offer(agent, at(3, 15), expires=at(3, 15, 30))  # shown, never answered


@pytest.fixture
def work(integration: BotIntegration) -> Work:
    return Work(integration)


def floor_policy(hourly: int = 1200) -> PayPolicy:
    return PayPolicy.objects.create(floor_hourly_amount=hourly)


# --- engaged time -------------------------------------------------------------------------------


@pytest.mark.django_db
def test_engaged_time_counts_overlaps_once_and_clips_to_the_week(make_agent, work):
    # given
    agent, other = make_agent(online=False), make_agent(online=False)
    work.assignment(agent, at(-1, 23), at(0, 0, 30))  # from the Sunday before: 30 min inside
    work.offer(agent, at(0, 9), responded=at(0, 9, 0, 30))  # accepted after 30 s ...
    work.assignment(agent, at(0, 9, 0, 30), at(0, 10))  # ... then the conversation
    work.assignment(agent, at(0, 9, 30), at(0, 10, 30))  # overlapping: 09:00-10:30 is 1.5 h
    work.assignment(agent, at(0, 9, 45), at(0, 10, 15))  # nested: nothing more
    work.offer(agent, at(0, 10, 5), responded=at(0, 10, 6))  # declined while busy: nothing more
    work.offer(agent, at(2, 14), expires=at(2, 14, 10))  # never answered: 10 min
    work.assignment(agent, at(6, 23, 45), at(7, 1))  # into the next week: 15 min inside
    work.assignment(agent, at(-3, 9), at(-3, 17))  # the week before
    work.assignment(agent, at(8, 9), at(8, 17))  # the week after
    work.offer(agent, at(-2, 9), responded=at(-2, 9, 1))  # the week before
    work.assignment(other, at(0, 0), at(7, 0))  # another agent's week

    # when
    seconds = dispatch_selectors.engaged_seconds(agent_id=agent.pk, start=START, end=END)

    # then: 30 min + 1.5 h + 10 min + 15 min
    assert seconds == 1800 + 5400 + 600 + 900
    # and any window clips the same way
    assert dispatch_selectors.engaged_seconds(agent_id=agent.pk, start=at(0, 9, 15), end=at(0, 9, 45)) == 1800
    assert dispatch_selectors.engaged_seconds(agent_id=agent.pk, start=at(0, 11), end=at(0, 12)) == 0
    assert dispatch_selectors.engaged_seconds(agent_id=other.pk, start=START, end=END) == 7 * 24 * HOUR


@pytest.mark.django_db
def test_a_conversation_still_open_counts_until_the_end_of_the_week(make_agent, work):
    agent = make_agent(online=False)
    work.assignment(agent, at(6, 22), None)  # Sunday 22:00, never ended

    assert dispatch_selectors.engaged_seconds(agent_id=agent.pk, start=START, end=END) == 2 * HOUR


@pytest.mark.django_db
def test_an_offer_expired_late_counts_only_until_it_expired(make_agent, work):
    # given: a 20 s offer whose expiry was recorded an hour late (the workers were down; the sweeper caught up)
    agent = make_agent(online=False)
    offer = work.offer(agent, at(0, 10), expires=at(0, 10, 0, 20))
    Offer.objects.filter(pk=offer.pk).update(responded_at=at(0, 11))

    # when
    seconds = dispatch_selectors.engaged_seconds(agent_id=agent.pk, start=START, end=END)

    # then: the agent held it for 20 s (it could not be accepted after that), not an hour
    assert seconds == 20


# --- closing a week -----------------------------------------------------------------------------

money = pytest.mark.django_db(transaction=True)


@money
def test_the_floor_tops_up_engaged_hours_times_the_hourly_minimum(recorded_jobs, make_agent, work):
    # given: a floor of 1200 per hour; two engaged hours; 1000 earned that week (600 + a 400 bonus)
    floor_policy(1200)
    agent = make_agent(online=False)
    work.two_hours(agent)
    work.earned(agent, 600, at(1, 11))
    work.earned(agent, 400, at(1, 12), kind="quality_bonus")
    work.earned(agent, 700, at(-1, 23, 59))  # the week before: not this week's
    work.earned(agent, 800, at(7, 0, 0, 1))  # the week after
    work.earned(agent, 900, at(-5, 12), kind="floor_topup")  # an earlier week's top-up is not "earned"

    # when
    topups = dispatch_floor.floor_close_week(week_start=MONDAY)

    # then: 2 h x 1200 = 2400 minimum, less 1000 earned
    (topup,) = topups
    topup.refresh_from_db()
    assert topup.agent_id == agent.pk
    assert (topup.kind, topup.week_start, topup.amount) == (Earning.Kind.FLOOR_TOPUP, MONDAY, 1400)
    assert topup.currency == settings.PLATFORM_CURRENCY
    assert topup.conversation_id is None and topup.assignment_id is None
    assert topup.detail == {"engaged_seconds": 7200, "hourly_minimum": 1200, "minimum": 2400, "earned": 1000}
    assert topup.state == Earning.State.HELD and topup.payable_at <= timezone.now()
    assert balance(f"agent:{agent.pk}:payable") == -1400
    assert balance(ledger.PAY_EXPENSE) == 1400
    ledger_sums_to_zero()

    # and it is released at once, into a transfer
    assert recorded_jobs.names() == ["release_earning"]
    recorded_jobs.run("release_earning")
    topup.refresh_from_db()
    assert topup.state == Earning.State.RELEASED
    transfer = Transfer.objects.get(earning=topup)
    assert (transfer.amount, transfer.agent_id) == (1400, agent.pk)


@money
def test_a_week_is_topped_up_once_per_agent(recorded_jobs, make_agent, work):
    # given: the week was closed
    floor_policy(1200)
    agent = make_agent(online=False)
    work.two_hours(agent)
    (first,) = dispatch_floor.floor_close_week(week_start=MONDAY)

    # when: it is closed again (a retried job, a second worker), even after more work shows up
    work.assignment(agent, at(4, 9), at(4, 12))
    again = dispatch_floor.floor_close_week(week_start=MONDAY)

    # then
    assert again == []
    assert list(Earning.objects.filter(kind=Earning.Kind.FLOOR_TOPUP).values_list("pk", flat=True)) == [first.pk]
    assert balance(f"agent:{agent.pk}:payable") == -2400


@money
def test_offers_alone_count_as_engaged_time(recorded_jobs, make_agent, work):
    # given: an agent who only had offers that week (30 min shown, never answered), and earned nothing
    floor_policy(1200)
    agent = make_agent(online=False)
    work.offer(agent, at(2, 8), expires=at(2, 8, 30))

    # when
    (topup,) = dispatch_floor.floor_close_week(week_start=MONDAY)

    # then
    assert (topup.agent_id, topup.amount) == (agent.pk, 600)


@money
def test_agents_who_earned_the_floor_get_nothing(recorded_jobs, make_agent, work):
    # given: three agents with two engaged hours each (minimum 2400)
    floor_policy(1200)
    exactly, more, short = (make_agent(online=False) for _ in range(3))
    for agent in (exactly, more, short):
        work.two_hours(agent)
    work.earned(exactly, 2400, at(2, 12))
    work.earned(more, 3000, at(2, 12))
    work.earned(short, 2399, at(2, 12))

    # when
    topups = dispatch_floor.floor_close_week(week_start=MONDAY)

    # then: only the one short by 1
    assert [(t.agent_id, t.amount) for t in topups] == [(short.pk, 1)]


@money
def test_disputed_earnings_do_not_count_as_earned(recorded_jobs, make_agent, work):
    # given: 1000 earned, and 800 more that was disputed (not owed after all)
    floor_policy(1200)
    agent = make_agent(online=False)
    work.two_hours(agent)
    work.earned(agent, 1000, at(1, 11))
    work.earned(agent, 800, at(1, 12), state="disputed")

    # when
    (topup,) = dispatch_floor.floor_close_week(week_start=MONDAY)

    # then
    assert topup.amount == 1400 and topup.detail["earned"] == 1000


@money
def test_a_floor_of_zero_turns_it_off(recorded_jobs, make_agent, work):
    floor_policy(0)
    agent = make_agent(online=False)
    work.two_hours(agent)

    assert dispatch_floor.floor_close_week(week_start=MONDAY) == []
    assert not Earning.objects.exists()
    assert recorded_jobs.calls == []


@pytest.mark.postgres
@money
def test_the_top_up_is_released_and_transferred_once(stripe_on, make_agent, work):
    # given: an onboarded agent short of the floor by 1400 that week
    floor_policy(1200)
    agent = make_agent(online=False)
    account = onboard(agent, stripe_on)
    work.two_hours(agent)
    work.earned(agent, 1000, at(1, 11))

    # when: the week is closed (and then again, and the sweeper runs)
    (topup,) = dispatch_floor.floor_close_week(week_start=MONDAY)
    transfer = wait_for(lambda: Transfer.objects.filter(earning=topup, state=Transfer.State.PAID).first())
    assert dispatch_floor.floor_close_week(week_start=MONDAY) == []
    sweeper.payouts_sweep()
    assert jobs.runner.wait_idle(timeout=10)

    # then: one transfer of 1400 to the agent's account, at Stripe and here
    at_stripe = [t for t in stripe_on.transfers.values() if t["metadata"].get("earning_id") == topup.pk]
    assert len(at_stripe) == 1
    assert (at_stripe[0]["amount"], at_stripe[0]["destination"]) == (1400, account.stripe_account_id)
    assert at_stripe[0]["metadata"]["transfer_id"] == transfer.pk
    assert transfer.amount == 1400 and transfer.stripe_transfer_id == at_stripe[0]["id"]
    assert Transfer.objects.filter(agent=agent).count() == 1
    topup.refresh_from_db()
    assert topup.state == Earning.State.RELEASED
    assert balance(f"agent:{agent.pk}:payable") == 0
    assert balance(ledger.STRIPE_BALANCE) == -1400
    assert balance(ledger.PAY_EXPENSE) == 1400
    ledger_sums_to_zero()


# --- which weeks are closed ---------------------------------------------------------------------


def this_monday() -> date:
    today = timezone.now().date()
    return today - timedelta(days=today.weekday())


def one_hour_in(work: Work, agent: Agent, monday: date) -> None:
    start = datetime.combine(monday, datetime.min.time(), tzinfo=UTC)
    work.assignment(agent, start + timedelta(hours=9), start + timedelta(hours=10))


@money
def test_the_last_finished_weeks_are_closed_and_not_the_current_one(recorded_jobs, settings, make_agent, work):
    # given: an engaged hour in each of the last three weeks and in the current one
    settings.FLOOR_CLOSE_AFTER_SECONDS = 0
    floor_policy(1200)
    agent = make_agent(online=False)
    monday = this_monday()
    weeks = [monday - timedelta(days=7 * n) for n in (3, 2, 1, 0)]
    for week in weeks:
        one_hour_in(work, agent, week)

    # when
    closed = dispatch_floor.floor_close_due_weeks()

    # then: the two last finished weeks (the older one covers a run that was missed), not the current week
    assert closed == 2
    topups = Earning.objects.filter(kind=Earning.Kind.FLOOR_TOPUP).order_by("week_start")
    assert [(t.week_start, t.amount) for t in topups] == [(weeks[1], 1200), (weeks[2], 1200)]

    # and running it again closes nothing more
    assert dispatch_floor.floor_close_due_weeks() == 0
    assert Earning.objects.filter(kind=Earning.Kind.FLOOR_TOPUP).count() == 2


@money
def test_a_week_is_closed_only_once_the_grace_after_it_has_passed(recorded_jobs, settings, make_agent, work):
    # given: last week ended less than FLOOR_CLOSE_AFTER_SECONDS ago (a grace of a whole week, here)
    settings.FLOOR_CLOSE_AFTER_SECONDS = 7 * 24 * HOUR
    floor_policy(1200)
    agent = make_agent(online=False)
    monday = this_monday()
    weeks = [monday - timedelta(days=7 * n) for n in (3, 2, 1)]
    for week in weeks:
        one_hour_in(work, agent, week)

    # when
    dispatch_floor.floor_close_due_weeks()

    # then: last week is not closed yet
    closed = sorted(Earning.objects.filter(kind=Earning.Kind.FLOOR_TOPUP).values_list("week_start", flat=True))
    assert closed == [weeks[0], weeks[1]]
