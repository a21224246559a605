"""What a conversation pays: the pay rule, the surge, the quality bonus, and the quote locked at acceptance.

Unit tests call payouts.pricing directly. The flows go through the dispatch and
marketplace services with `recorded_jobs`, so no background job runs (no
dispatcher makes an offer of its own); they run on SQLite and PostgreSQL alike.
"""

from __future__ import annotations

from decimal import Decimal

import pytest
from django.conf import settings
from django.core.cache import cache

from dispatch import payloads
from dispatch import selectors as dispatch_selectors
from dispatch.models import Assignment
from dispatch.services import conversations, escalations, offers
from marketplace import services as marketplace
from marketplace.models import Agent, Conversation
from payouts import pricing
from payouts.models import Earning, PayPolicy, PayRule
from payouts.services import earnings, ledger

from .conftest import balance


def conversation(topic: str = "", priority: str = "normal", language: str = "") -> Conversation:
    """An unsaved conversation: pricing only reads its topic, priority and language."""
    return Conversation(topic=topic, priority=priority, language=language)


def policy(**fields) -> PayPolicy:
    defaults = {
        "default_amount": 400,
        "surge_enabled": True,
        "surge_threshold": 1.0,
        "surge_per_unit": 0.25,
        "surge_max": 2.0,
        "quality_bonus_amount": 150,
        "quality_bonus_min_score": 4,
    }
    return PayPolicy.objects.create(**{**defaults, **fields})


@pytest.fixture(autouse=True)
def _queues_past_the_admission_sla(settings) -> None:
    """The surge flows build queue pressure with one agent and a few conversations: with no history
    (handle time 300 s) the third one would wait past ADMISSION_SLA_SECONDS and be refused, which is
    not what these tests are about (tests/dispatch/test_admission.py is)."""
    settings.ADMISSION_CONTROL = False


# --- the base amount: the most specific active rule -------------------------------------


@pytest.fixture
def rules(db) -> None:
    PayRule.objects.create(language="de", amount=500)
    PayRule.objects.create(priority="urgent", amount=600)
    PayRule.objects.create(priority="urgent", language="de", amount=650)
    PayRule.objects.create(topic="billing", amount=700)
    PayRule.objects.create(topic="billing", language="fr", amount=800)
    PayRule.objects.create(priority="low", amount=1)  # never matches the conversations below


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("topic", "priority", "language", "expected"),
    [
        ("billing", "urgent", "fr", 800),  # topic + language
        ("billing", "urgent", "de", 700),  # topic alone beats priority + language
        ("billing", "normal", "en", 700),
        ("refund", "urgent", "de", 650),  # priority + language beats priority alone
        ("refund", "urgent", "en", 600),  # priority beats language
        ("refund", "normal", "de", 500),
        ("refund", "normal", "en", 400),  # no rule matches: the policy's default
        ("", "normal", "", 400),  # a rule naming a topic never matches a conversation without one
    ],
)
def test_the_most_specific_matching_rule_sets_the_base(rules, topic, priority, language, expected):
    # given: rules by topic, priority and language; a policy defaulting to 400
    pay_policy = policy(default_amount=400)

    # when
    base = pricing.base_amount(conversation(topic, priority, language), pay_policy)

    # then
    assert base == expected


@pytest.mark.django_db
def test_inactive_rules_are_ignored():
    # given: a specific rule switched off, and a broader one active
    pay_policy = policy(default_amount=400)
    PayRule.objects.create(topic="billing", amount=999, active=False)
    PayRule.objects.create(language="de", amount=500)

    # then: the inactive rule does not count, whatever its specificity
    assert pricing.base_amount(conversation("billing", language="de"), pay_policy) == 500
    assert pricing.base_amount(conversation("billing", language="en"), pay_policy) == 400

    # when: every rule is switched off
    PayRule.objects.update(active=False)

    # then: the policy's default
    assert pricing.base_amount(conversation("billing", language="de"), pay_policy) == 400


@pytest.mark.django_db
def test_a_catch_all_rule_beats_the_policy_default_and_loses_to_any_other():
    pay_policy = policy(default_amount=400)
    PayRule.objects.create(amount=450)  # blank everywhere: matches everything
    PayRule.objects.create(language="de", amount=500)

    assert pricing.base_amount(conversation("billing", language="en"), pay_policy) == 450
    assert pricing.base_amount(conversation("billing", language="de"), pay_policy) == 500


@pytest.mark.django_db
def test_without_a_policy_row_the_default_comes_from_settings(settings):
    # given: no PayPolicy row and no rule
    settings.DEFAULT_PAY_AMOUNT = 321
    assert not PayPolicy.objects.exists()

    # when
    quote = pricing.quote(conversation(language="en"))

    # then
    assert quote.base == 321 and quote.amount == 321 and quote.surge == Decimal("1.00")


# --- the surge multiplier ------------------------------------------------------------------


def unsaved_policy(**fields) -> PayPolicy:
    return PayPolicy(
        **{"surge_enabled": True, "surge_threshold": 1.0, "surge_per_unit": 0.25, "surge_max": 2.0, **fields}
    )


@pytest.mark.parametrize(
    ("pressure", "expected"),
    [
        (0.0, "1.00"),
        (0.5, "1.00"),
        (1.0, "1.00"),  # at the threshold: no surge yet
        (2.0, "1.25"),  # 1 + 0.25 x (2 - 1)
        (3.0, "1.50"),
        (4.6, "1.90"),
        (5.0, "2.00"),
        (50.0, "2.00"),  # capped at surge_max
    ],
)
def test_surge_grows_with_pressure_above_the_threshold_up_to_the_cap(pressure, expected):
    multiplier = pricing.surge_multiplier(pressure, unsaved_policy())

    assert multiplier == Decimal(expected)
    assert multiplier.as_tuple().exponent == -2  # two decimals, as the offer stores it


def test_surge_threshold_and_step_come_from_the_policy():
    pay_policy = unsaved_policy(surge_threshold=2.0, surge_per_unit=0.5, surge_max=3.0)

    assert pricing.surge_multiplier(2.0, pay_policy) == Decimal("1.00")
    assert pricing.surge_multiplier(3.0, pay_policy) == Decimal("1.50")
    assert pricing.surge_multiplier(10.0, pay_policy) == Decimal("3.00")


def test_disabled_surge_is_always_one():
    assert pricing.surge_multiplier(50.0, unsaved_policy(surge_enabled=False)) == Decimal("1.00")


def test_a_cap_below_one_never_lowers_the_pay():
    assert pricing.surge_multiplier(50.0, unsaved_policy(surge_max=0.5)) == Decimal("1.00")


# --- quotes end to end ------------------------------------------------------------------------

flow = pytest.mark.django_db(transaction=True)


@flow
def test_an_offer_under_queue_pressure_pays_base_times_surge(recorded_jobs, make_agent, escalate):
    # given: three English conversations waiting and one online English agent with one free slot
    # (a German conversation and a German-only agent do not change the English queue's pressure)
    policy(default_amount=400, quality_bonus_amount=150)
    agent = make_agent(languages=("en",), capacity=1)
    make_agent(languages=("de",), capacity=3)
    waiting = [escalate(language="en") for _ in range(3)]
    escalate(language="de")
    cache.clear()

    # when: the first one is offered
    offer = offers.offer_create(conversation_id=waiting[0].pk, agent_id=agent.pk)

    # then: pressure 3 per free slot -> 1 + 0.25 x (3 - 1) = x1.50
    offer.refresh_from_db()
    assert (offer.pay_base, offer.pay_surge, offer.pay_amount) == (400, Decimal("1.50"), 600)
    assert offer.pay_bonus == 150
    payload = payloads.offer_payload(offer)
    assert payload["type"] == "offer"
    assert payload["pay"] == {
        "amount": 600,
        "currency": settings.PLATFORM_CURRENCY,
        "base": 400,
        "surge": 1.5,
        "quality_bonus": 150,
    }


@flow
def test_a_calm_queue_pays_the_base(recorded_jobs, make_agent, escalate):
    # given: one conversation waiting, one free slot (pressure 1, at the threshold)
    policy(default_amount=400)
    agent = make_agent(languages=("en",))
    waiting = escalate(language="en")

    # when
    offer = offers.offer_create(conversation_id=waiting.pk, agent_id=agent.pk)

    # then
    assert (offer.pay_base, offer.pay_surge, offer.pay_amount) == (400, Decimal("1.00"), 400)


@flow
def test_the_surged_amount_rounds_half_up_to_a_minor_unit(recorded_jobs, make_agent, escalate):
    # given: a base of 333 and x1.50 (3 waiting, 1 free slot): 499.5
    policy()
    PayRule.objects.create(topic="billing", amount=333)
    agent = make_agent(languages=("en",), skills=("billing",))
    waiting = [escalate(language="en", topic="billing") for _ in range(3)]

    # when
    offer = offers.offer_create(conversation_id=waiting[0].pk, agent_id=agent.pk)

    # then
    assert offer.pay_amount == 500


@flow
def test_queue_pressure_is_cached_for_a_moment(recorded_jobs, make_agent, escalate):
    # given: three waiting conversations and one free slot: x1.50
    policy()
    make_agent(languages=("en",))
    later = [make_agent(languages=("en",), online=False) for _ in range(2)]
    conv = [escalate(language="en") for _ in range(3)][0]
    assert pricing.quote(conv).surge == Decimal("1.50")

    # when: two more agents come online (pressure 1 now)
    Agent.objects.filter(pk__in=[a.pk for a in later]).update(status=Agent.Status.ONLINE)

    # then: the cached pressure still holds, until the cache is cleared (or its 2 s pass)
    assert pricing.quote(conv).surge == Decimal("1.50")
    cache.clear()
    assert pricing.quote(conv).surge == Decimal("1.00")


@flow
def test_disabled_surge_pays_the_base_however_long_the_queue(recorded_jobs, make_agent, escalate):
    policy(default_amount=400, surge_enabled=False)
    agent = make_agent(languages=("en",))
    waiting = [escalate(language="en") for _ in range(6)]

    offer = offers.offer_create(conversation_id=waiting[0].pk, agent_id=agent.pk)

    assert (offer.pay_surge, offer.pay_amount) == (Decimal("1.00"), 400)


# --- the quote is locked when the agent accepts -----------------------------------------------


@flow
def test_the_offers_quote_is_what_the_resolution_earns(recorded_jobs, make_agent, escalate):
    # given: a billing conversation offered at 500 (rule), bonus 150
    policy(default_amount=400, quality_bonus_amount=150)
    rule = PayRule.objects.create(topic="billing", amount=500)
    agent = make_agent(skills=("billing",))
    conv = escalate(topic="billing", language="en")
    offer = offers.offer_create(conversation_id=conv.pk, agent_id=agent.pk)
    assert offer.pay_amount == 500

    # when: the pay rule and the policy change while the offer is open; the agent accepts and resolves
    PayRule.objects.filter(pk=rule.pk).update(amount=900)
    PayPolicy.objects.update(default_amount=1000, quality_bonus_amount=999)
    cache.clear()
    assert pricing.quote(conv).base == 900  # a quote taken now would differ
    offers.offer_accept(offer_id=offer.pk, agent=agent)
    conversations.conversation_resolve(conversation_id=conv.pk, agent=agent, outcome="resolved")

    # then: the assignment locked the offer's quote, and the earning is exactly that
    assignment = Assignment.objects.get(conversation=conv)
    assert assignment.offer_id == offer.pk
    assert (assignment.pay_amount, assignment.quality_bonus) == (500, 150)
    assert assignment.end_reason == "resolved" and assignment.ended_at is not None
    earning = Earning.objects.get(conversation=conv)
    assert earning.kind == Earning.Kind.RESOLUTION
    assert earning.amount == offer.pay_amount == 500
    assert earning.currency == offer.pay_currency == settings.PLATFORM_CURRENCY
    assert earning.agent_id == agent.pk and earning.assignment_id == assignment.pk
    assert earning.detail == {"quoted_at": "offer", "offer_id": offer.pk, "base": 500, "surge": "1.00"}
    # and it is owed to the agent in the ledger, released by a job
    assert balance(f"agent:{agent.pk}:payable") == -500
    assert balance(ledger.PAY_EXPENSE) == 500
    assert "release_earning" in recorded_jobs.names()


@flow
def test_an_unresolved_outcome_earns_nothing(recorded_jobs, make_agent, resolve):
    # given
    policy()
    agent = make_agent()

    # when: the agent closes it as unresolved
    conv = resolve(agent, outcome="unresolved", language="en")

    # then: no earning and nothing in the ledger; the assignment ended as unresolved
    assert conv.status == Conversation.Status.RESOLVED and conv.outcome == "unresolved"
    assert not Earning.objects.exists()
    assert balance(f"agent:{agent.pk}:payable") == 0
    assert Assignment.objects.get(conversation=conv).end_reason == "unresolved"
    assert "release_earning" not in recorded_jobs.names()

    # and a 5-star rating of it earns no bonus either
    escalations.conversation_rate(conversation_id=conv.pk, score=5, comment="", actor="bot")
    assert not Earning.objects.exists()


# --- the quality bonus -----------------------------------------------------------------------


@flow
@pytest.mark.parametrize(("score", "earns"), [(5, True), (4, True), (3, False), (1, False)])
def test_a_rating_of_4_or_5_earns_the_quality_bonus(recorded_jobs, make_agent, resolve, score, earns):
    # given: a resolved conversation, quoted with a bonus of 150
    policy(quality_bonus_amount=150, quality_bonus_min_score=4)
    agent = make_agent()
    conv = resolve(agent, language="en")
    resolution = Earning.objects.get(conversation=conv, kind=Earning.Kind.RESOLUTION)

    # when: the customer rates it
    escalations.conversation_rate(conversation_id=conv.pk, score=score, comment="", actor="bot")

    # then
    bonuses = list(Earning.objects.filter(conversation=conv, kind=Earning.Kind.QUALITY_BONUS))
    if not earns:
        assert bonuses == []
        assert balance(f"agent:{agent.pk}:payable") == -resolution.amount
        return
    (bonus,) = bonuses
    assert bonus.amount == PayPolicy.current().quality_bonus_amount == 150
    assert bonus.agent_id == agent.pk and bonus.assignment_id == resolution.assignment_id
    assert bonus.detail == {"rating": score}
    assert bonus.payable_at >= resolution.payable_at
    assert balance(f"agent:{agent.pk}:payable") == -(resolution.amount + 150)


@flow
def test_the_bonus_is_the_one_quoted_not_the_policys_current_one(recorded_jobs, make_agent, resolve):
    # given: resolved with a bonus of 150 quoted; the policy's bonus has since gone up
    policy(quality_bonus_amount=150)
    agent = make_agent()
    conv = resolve(agent, language="en")
    PayPolicy.objects.update(quality_bonus_amount=500)

    # when
    escalations.conversation_rate(conversation_id=conv.pk, score=5, comment="great", actor="bot")

    # then
    assert Earning.objects.get(conversation=conv, kind=Earning.Kind.QUALITY_BONUS).amount == 150


@flow
def test_a_conversation_is_rated_once_and_earns_one_bonus(recorded_jobs, make_agent, resolve):
    # given: rated 5 once
    policy(quality_bonus_amount=150)
    agent = make_agent()
    conv = resolve(agent, language="en")
    escalations.conversation_rate(conversation_id=conv.pk, score=5, comment="", actor="bot")

    # when: rated again
    with pytest.raises(marketplace.AlreadyRated):
        escalations.conversation_rate(conversation_id=conv.pk, score=5, comment="", actor="bot")

    # then: still one bonus; and asking the payouts service again changes nothing either
    assert (
        earnings.earning_accrue_bonus(
            conversation=conv, score=5, quality_bonuses=dispatch_selectors.quality_bonuses(conv.pk)
        )
        is None
    )
    assert Earning.objects.filter(conversation=conv, kind=Earning.Kind.QUALITY_BONUS).count() == 1


@flow
def test_a_disputed_resolution_earns_no_bonus(recorded_jobs, make_agent, resolve):
    # given: the resolution's earning was disputed (voided inside the hold)
    policy(quality_bonus_amount=150)
    agent = make_agent()
    conv = resolve(agent, language="en")
    resolution = Earning.objects.get(conversation=conv)
    earnings.earning_dispute(earning_id=resolution.pk, reason="test", actor="admin")

    # when
    escalations.conversation_rate(conversation_id=conv.pk, score=5, comment="", actor="bot")

    # then
    assert not Earning.objects.filter(kind=Earning.Kind.QUALITY_BONUS).exists()


# --- an admin's reassignment quotes afresh --------------------------------------------------


@flow
def test_an_admin_reassignment_locks_a_fresh_quote(recorded_jobs, make_agent, escalate):
    # given: the first agent accepted at 500 (bonus 150); then the rule went to 800 and the bonus to 200
    policy(quality_bonus_amount=150)
    rule = PayRule.objects.create(topic="billing", amount=500)
    first = make_agent(skills=("billing",))
    second = make_agent(skills=("billing",))
    conv = escalate(topic="billing", language="en")
    offer = offers.offer_create(conversation_id=conv.pk, agent_id=first.pk)
    offers.offer_accept(offer_id=offer.pk, agent=first)
    PayRule.objects.filter(pk=rule.pk).update(amount=800)
    PayPolicy.objects.update(quality_bonus_amount=200)
    cache.clear()

    # when: an admin gives the conversation to the second agent
    conversations.conversation_reassign(conversation_id=conv.pk, agent_id=second.pk, actor="admin:ops")

    # then: the first spell ended as reassigned with its old quote; the new one has no offer and a fresh quote
    old, new = Assignment.objects.filter(conversation=conv).order_by("pk")
    assert (old.agent_id, old.end_reason, old.pay_amount, old.offer_id) == (first.pk, "reassigned", 500, offer.pk)
    assert old.ended_at is not None
    assert (new.agent_id, new.offer_id, new.ended_at) == (second.pk, None, None)
    assert (new.pay_amount, new.pay_currency, new.quality_bonus) == (800, settings.PLATFORM_CURRENCY, 200)

    # and resolving pays the second agent the fresh quote, and the first nothing
    conversations.conversation_resolve(conversation_id=conv.pk, agent=second, outcome="resolved")
    earning = Earning.objects.get(conversation=conv)
    assert (earning.agent_id, earning.amount) == (second.pk, 800)
    assert earning.assignment_id == new.pk and earning.detail == {"quoted_at": "assignment"}
    assert not Earning.objects.filter(agent=first).exists()


@flow
def test_a_reassignment_of_a_queued_conversation_quotes_the_surge_of_the_moment(recorded_jobs, make_agent, escalate):
    # given: four conversations waiting, one free slot among the agents online
    policy(default_amount=400)
    agent = make_agent(languages=("en",))
    waiting = [escalate(language="en") for _ in range(4)]

    # when: an admin assigns the first one directly (no offer)
    conversations.conversation_reassign(conversation_id=waiting[0].pk, agent_id=agent.pk, actor="admin:ops")

    # then: 4 waiting per free slot -> x1.75
    assignment = Assignment.objects.get(conversation=waiting[0])
    assert assignment.offer_id is None
    assert assignment.pay_amount == 700
