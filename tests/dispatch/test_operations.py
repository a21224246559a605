"""The admin's operations page: every figure from known data, the charts, who may see it, and the admin actions."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from itertools import count
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.urls import reverse
from django.utils import timezone

from dispatch import charts, ops
from dispatch import windows as window_ops
from dispatch.models import Assignment, Offer
from dispatch.services import offers as dispatch_offers
from marketplace.models import Agent, BotIntegration, CallbackEvent, Conversation, ConversationEvent
from payouts.models import Earning, Transfer

pytestmark = pytest.mark.django_db

S = timedelta(seconds=1)
MIN = timedelta(minutes=1)
H = timedelta(hours=1)


@pytest.fixture
def now() -> datetime:
    return timezone.now()


@pytest.fixture
def conversation_at(integration: BotIntegration, now: datetime) -> Callable[..., Conversation]:
    """A conversation whose status history (its event log) happened at the given times."""
    numbers: Iterator[int] = count(1)

    def make(
        steps: list[tuple[str, str, datetime]], *, language: str = "en", priority: str = "normal", **fields: Any
    ) -> Conversation:
        fields.setdefault("status", steps[-1][1])
        conversation = Conversation.objects.create(
            integration=integration,
            external_id=f"ops-{next(numbers)}",
            language=language,
            priority=priority,
            queue_key=now,
            **fields,
        )
        for from_status, to_status, at in steps:
            event = ConversationEvent.objects.create(
                conversation=conversation,
                kind=f"status.{to_status}",
                from_status=from_status,
                to_status=to_status,
                actor="system",
            )
            ConversationEvent.objects.filter(pk=event.pk).update(created_at=at)
        stamps = {f"{to}_at": at for _, to, at in steps if to in ("queued", "offered", "assigned", "cancelled")}
        Conversation.objects.filter(pk=conversation.pk).update(created_at=steps[0][2], **stamps)
        conversation.refresh_from_db()
        return conversation

    return make


@pytest.fixture
def answered(conversation_at: Callable[..., Conversation], now: datetime) -> Callable[..., Conversation]:
    """Answered `ago` before now after waiting `wait` seconds, with a declined offer in between."""

    def make(wait: float, ago: timedelta, **fields: Any) -> Conversation:
        end = now - ago
        start = end - wait * S
        middle = start + (end - start) / 2
        return conversation_at(
            [
                ("new", "queued", start),
                ("queued", "offered", start + (middle - start) / 2),
                ("offered", "queued", middle),  # declined: still the same wait
                ("queued", "offered", middle + (end - middle) / 2),
                ("offered", "assigned", end),
            ],
            **{"status": "resolved", **fields},
        )

    return make


@pytest.fixture
def left(conversation_at: Callable[..., Conversation], now: datetime) -> Callable[..., Conversation]:
    """The customer left `ago` before now after waiting `wait` seconds."""

    def make(wait: float, ago: timedelta) -> Conversation:
        end = now - ago
        return conversation_at([("new", "queued", end - wait * S), ("queued", "cancelled", end)])

    return make


# --- waits and the SLA -------------------------------------------------------------------------


def test_time_to_answer_percentiles_histogram_and_sla_over_each_window(answered, left, now, settings):
    settings.SLA_ANSWER_SECONDS = 60
    settings.SLA_TARGET_RATIO = 0.8
    for wait in range(10, 101, 10):  # 10, 20, ... 100 s, all in the last hour
        answered(wait, 5 * MIN)
    answered(500, 3 * H)  # in the last 24 h only
    answered(5, 30 * H)  # in neither window
    left(90, 20 * MIN)  # left after the target: a miss
    left(20, 20 * MIN)  # left before the target: not counted

    windows = window_ops.window_figures(now=now)

    hour, day = windows["hour"], windows["day"]
    assert (hour.waits.answered, hour.waits.p50, hour.waits.p90, hour.waits.p99) == (10, 50.0, 90.0, 100.0)
    assert hour.waits.longest == 100.0
    assert (day.waits.answered, day.waits.p50, day.waits.p90, day.waits.p99) == (11, 60.0, 100.0, 500.0)
    # 10..60 s are within the 60 s target (6 of them); one customer left at 90 s.
    assert (hour.sla.answered, hour.sla.answered_within, hour.sla.abandoned_after_target) == (10, 6, 1)
    assert hour.sla.ratio == round(6 / 11, 4) and hour.sla.met is False
    assert (day.sla.answered, day.sla.answered_within, day.sla.ratio) == (11, 6, 0.5)
    # Buckets hold (lower, upper]: 60 s is within the target, as in the SLA.
    assert [(b.label, b.count, b.over_target) for b in day.waits.histogram] == [
        ("≤10s", 1, False),
        ("10–30s", 2, False),
        ("30s–1m", 3, False),
        ("1–2m", 4, True),
        ("2–5m", 0, True),
        ("5–10m", 1, True),
        (">10m", 0, True),
    ]


def test_the_sla_target_is_a_setting(answered, now, settings):
    for wait in (10, 20, 30, 40, 100):
        answered(wait, 5 * MIN)

    settings.SLA_ANSWER_SECONDS, settings.SLA_TARGET_RATIO = 30, 0.6
    sla = window_ops.window_figures(now=now)["hour"].sla
    assert (sla.target_seconds, sla.answered_within, sla.ratio, sla.met) == (30, 3, 0.6, True)

    settings.SLA_ANSWER_SECONDS = 20
    sla = window_ops.window_figures(now=now)["hour"].sla
    assert (sla.answered_within, sla.ratio, sla.met) == (2, 0.4, False)


def test_no_answers_means_no_figures_rather_than_zero(now):
    hour = window_ops.window_figures(now=now)["hour"]
    assert (hour.waits.p50, hour.sla.ratio, hour.sla.met, hour.acceptance.rate, hour.ratings.average) == (
        None,
        None,
        None,
        None,
        None,
    )


def test_a_wait_runs_from_the_escalation_through_declined_offers_not_from_queued_at(
    escalate, make_agent, recorded_jobs, now
):
    # given: a customer escalated 90 s ago, declined by one agent, then accepted by another, through the services
    first, second = make_agent(), make_agent()
    conversation = escalate(language="en", topic="billing")
    ConversationEvent.objects.filter(conversation=conversation).update(created_at=now - 90 * S)
    offer = dispatch_offers.offer_create(conversation_id=conversation.pk, agent_id=first.pk)
    dispatch_offers.offer_decline(offer_id=offer.pk, agent=first)
    offer = dispatch_offers.offer_create(conversation_id=conversation.pk, agent_id=second.pk)
    dispatch_offers.offer_accept(offer_id=offer.pk, agent=second)

    spells = window_ops.waiting_spells(since=now - H, now=timezone.now())

    # then: one answered wait of about 90 s, although queued_at was stamped again by the decline
    conversation.refresh_from_db()
    assert (conversation.assigned_at - conversation.queued_at).total_seconds() < 5
    assert [(s.conversation_id, s.answered) for s in spells] == [(conversation.pk, True)]
    assert 90 <= spells[0].seconds < 100


def test_a_requeued_conversation_waits_again_from_its_requeue(conversation_at, now):
    # assigned an hour ago, then back in the queue 30 s ago (its agent disconnected)
    conversation_at(
        [
            ("new", "queued", now - H),
            ("queued", "offered", now - H + 5 * S),
            ("offered", "assigned", now - H + 10 * S),
            ("assigned", "queued", now - 30 * S),
        ]
    )
    spells = window_ops.waiting_spells(since=now - 2 * H, now=now)
    assert [s.seconds for s in spells] == [10.0]
    assert ops.sla_breaches(now=now) == (0, [])
    assert ops.queue_figures(now=now).oldest_wait_seconds == 30


# --- offers and ratings --------------------------------------------------------------------------


def test_offer_acceptance_rate_over_each_window(conversation_at, make_agent, now):
    agent = make_agent()
    conversation = conversation_at([("new", "queued", now - MIN)])

    def offer(state: str, ago: timedelta) -> None:
        made = Offer.objects.create(
            conversation=conversation,
            agent=agent,
            state=state,
            expires_at=now + MIN,
            pay_amount=500,
            pay_currency="usd",
        )
        Offer.objects.filter(pk=made.pk).update(created_at=now - ago)

    for state in ("accepted", "accepted", "accepted", "declined", "expired", "revoked", "revoked"):
        offer(state, 10 * MIN)
    offer("pending", MIN)  # still open: not counted
    offer("declined", 3 * H)
    offer("expired", 3 * H)
    for _ in range(5):
        offer("accepted", 30 * H)  # outside both windows

    windows = window_ops.window_figures(now=now)

    hour, day = windows["hour"].acceptance, windows["day"].acceptance
    assert (hour.accepted, hour.declined, hour.expired, hour.rate) == (3, 1, 1, 0.6)
    assert (day.accepted, day.declined, day.expired, day.rate) == (3, 2, 2, round(3 / 7, 4))


def test_customer_ratings_average_and_distribution(conversation_at, now):
    def rated(score: int, ago: timedelta) -> None:
        conversation = conversation_at([("new", "queued", now - 2 * ago)])
        Conversation.objects.filter(pk=conversation.pk).update(
            status="resolved", rating_score=score, rated_at=now - ago
        )

    for score in (5, 5, 4):
        rated(score, 10 * MIN)
    rated(1, 5 * H)
    rated(3, 5 * H)
    rated(2, 30 * H)  # outside both windows

    windows = window_ops.window_figures(now=now)

    hour, day = windows["hour"].ratings, windows["day"].ratings
    assert (hour.count, hour.average) == (3, 4.67)
    assert (day.count, day.average) == (5, 3.6)
    assert day.distribution == {1: 1, 2: 0, 3: 1, 4: 1, 5: 2}


# --- the queue, the agents, breaches, payouts ----------------------------------------------------


@pytest.fixture
def live_marketplace(conversation_at, make_agent, now, settings):
    """Five conversations waiting, one in conversation, three agents, transfers in every state."""
    settings.SLA_ANSWER_SECONDS = 60
    urgent = conversation_at([("new", "queued", now - 120 * S)], language="en", priority="urgent")
    conversation_at([("new", "queued", now - 10 * S)], language="en", priority="normal")
    conversation_at([("new", "queued", now - 10 * S)], language="sv", priority="high")
    anyone = conversation_at(
        [("new", "queued", now - 200 * S), ("queued", "offered", now - 5 * S)], language="", priority="low"
    )
    conversation_at(  # back in the queue 30 s ago after an hour with an agent: not over the target
        [
            ("new", "queued", now - H),
            ("queued", "offered", now - H + 5 * S),
            ("offered", "assigned", now - H + 10 * S),
            ("assigned", "queued", now - 30 * S),
        ],
        language="de",
    )
    english = make_agent(username="english", languages=("en",), capacity=2)
    bilingual = make_agent(username="bilingual", languages=("en", "sv"), capacity=1)
    german = make_agent(username="german", languages=("de",), online=False)
    Agent.objects.filter(pk=german.pk).update(status="away")
    make_agent(username="offline", languages=("en",), online=False)
    Agent.objects.filter(pk=english.pk).update(active_count=1)
    conversation_at([("new", "queued", now - 10 * MIN), ("queued", "assigned", now - 9 * MIN)], assigned_agent=english)
    Offer.objects.create(conversation=anyone, agent=bilingual, expires_at=now + MIN, pay_amount=500, pay_currency="usd")

    for state, hold in [
        ("pending", "no_account"),
        ("pending", "no_account"),
        ("pending", "stripe_not_configured"),
        ("paid", ""),
        ("failed", ""),
    ]:
        earning = Earning.objects.create(
            agent=english, kind="resolution", amount=500, currency="usd", state="released", payable_at=now
        )
        Transfer.objects.create(
            agent=english, earning=earning, amount=500, currency="usd", state=state, hold_reason=hold
        )
    CallbackEvent.objects.create(
        integration=urgent.integration,
        conversation=urgent,
        seq=1,
        type="conversation.queued",
        payload={},
        state="dead",
        max_attempts=12,
        next_attempt_at=now,
    )
    return {"urgent": urgent, "anyone": anyone, "english": english, "bilingual": bilingual}


def test_queue_agents_breaches_and_payouts_at_a_glance(live_marketplace, now):
    snapshot = ops.operations_snapshot(now=now)

    queue = snapshot.queue
    assert (queue.waiting, queue.queued, queue.offered, queue.in_conversation) == (5, 4, 1, 1)
    assert queue.by_priority == {"urgent": 1, "high": 1, "normal": 2, "low": 1}
    assert [(q.language, q.total, q.by_priority) for q in queue.by_language] == [
        ("en", 2, {"urgent": 1, "high": 0, "normal": 1, "low": 0}),
        ("", 1, {"urgent": 0, "high": 0, "normal": 0, "low": 1}),
        ("de", 1, {"urgent": 0, "high": 0, "normal": 1, "low": 0}),
        ("sv", 1, {"urgent": 0, "high": 1, "normal": 0, "low": 0}),
    ]
    assert queue.oldest_wait_seconds == 200

    agents = snapshot.agents
    assert (agents.online, agents.away, agents.slots, agents.busy, agents.free, agents.holding_offer) == (
        2,
        1,
        3,
        1,
        2,
        1,
    )
    assert [(c.language, c.agents, c.slots, c.busy, c.free, c.waiting) for c in agents.by_language] == [
        ("en", 2, 3, 1, 2, 2),
        ("", 2, 3, 1, 2, 1),  # conversations without a language: anyone may take them
        ("de", 0, 0, 0, 0, 1),  # waiting with nobody online who speaks it
        ("sv", 1, 1, 0, 1, 1),
    ]

    assert snapshot.breaching == 2
    assert [(b.conversation_id, b.waiting_seconds, b.status) for b in snapshot.breaches] == [
        (live_marketplace["anyone"].pk, 200, "offered"),
        (live_marketplace["urgent"].pk, 120, "queued"),
    ]

    assert snapshot.payouts.transfers_by_state == {"pending": 3, "submitted": 0, "paid": 1, "failed": 1}
    assert snapshot.payouts.held_by_reason == {"no_account": 2, "stripe_not_configured": 1}
    assert snapshot.dead_callbacks == 1


def test_bar_charts_are_drawn_to_scale():
    chart = charts.hbars("t", [("a", [("x", 1, "c1"), ("y", 1, "c2")], ""), ("b", [("x", 4, "c1")], "4 free")])
    a, b = chart.rows
    assert b.segments[0].width == 2 * (a.segments[0].width + a.segments[1].width)
    assert a.segments[1].x == a.segments[0].x + a.segments[0].width
    assert (a.total, b.note, chart.empty) == (2, "4 free", False)

    columns = charts.vbars("t", [("1", 0, "c"), ("2", 3, "c"), ("3", 6, "c")]).columns
    assert (columns[0].height, columns[2].height) == (0, 2 * columns[1].height)
    assert columns[2].y + columns[2].height == columns[0].y
    assert charts.vbars("t", [("1", 0, "c")]).empty


# --- the page, the JSON, who may see them --------------------------------------------------------


def test_the_page_shows_the_figures_with_svg_charts(admin_client, live_marketplace, answered, now):
    rated = answered(30, 5 * MIN, language="en")
    Conversation.objects.filter(pk=rated.pk).update(rating_score=5, rated_at=now - MIN)

    response = admin_client.get(reverse("admin:dispatch_operations"))

    assert response.status_code == 200
    html = response.content.decode()
    assert "no-store" in response["Cache-Control"]
    # six charts; the offers chart says there were none (the fixture only has an open offer)
    assert html.count('<figure class="ops-chart">') == 6 and "No offers in the last 24 hours." in html
    assert html.count('<svg viewBox="0 0 360 ') == 5 and html.count('role="img"') == 5
    assert "Waiting conversations by language and priority" in html
    assert live_marketplace["urgent"].pk in html and live_marketplace["anyone"].pk in html  # the breaches
    assert "?sla=breaching" in html and "hold_reason__exact=no_account" in html
    assert 'id="ops-live"' in html and "fetch(" in html  # refreshes itself
    context = response.context
    assert context["snapshot"].breaching == 2 and context["snapshot"].windows["hour"].waits.p50 == 30.0
    assert not any("cdn" in src for src in response.content.decode().lower().split('src="')[1:])


def test_the_fragment_is_just_the_figures(admin_client, live_marketplace):
    response = admin_client.get(reverse("admin:dispatch_operations"), {"fragment": "1"})
    assert response.status_code == 200 and response["X-Ops-Fragment"] == "1"
    html = response.content.decode()
    assert "<svg" in html and "<html" not in html and 'id="ops-breaching"' in html


def test_the_json_has_the_same_figures(admin_client, live_marketplace, answered, left):
    # with the fixture's two answered waits in the last hour (10 s after its requeue, 60 s):
    answered(30, 5 * MIN)
    answered(90, 5 * MIN)
    left(100, 5 * MIN)

    data = admin_client.get(reverse("admin:dispatch_operations_data")).json()

    assert data["queue"]["waiting"] == 5 and data["breaching"] == 2
    assert data["agents"]["online"] == 2 and data["agents"]["free"] == 2
    assert data["breaches"][0]["conversation_id"] == live_marketplace["anyone"].pk
    hour = data["windows"]["hour"]
    assert hour["sla"] == {
        "target_seconds": 60.0,
        "target_ratio": 0.8,
        "answered": 4,
        "answered_within": 3,
        "abandoned_after_target": 1,
        "ratio": 0.6,
        "met": False,
    }
    assert (hour["waits"]["p50"], hour["waits"]["p90"]) == (30.0, 90.0)
    assert data["payouts"]["held_by_reason"] == {"no_account": 2, "stripe_not_configured": 1}
    assert data["windows"]["day"]["ratings"]["distribution"] == {"1": 0, "2": 0, "3": 0, "4": 0, "5": 0}


@pytest.mark.parametrize("name", ["admin:dispatch_operations", "admin:dispatch_operations_data"])
def test_anonymous_visitors_are_sent_to_log_in(client, name):
    response = client.get(reverse(name))
    assert response.status_code == 302 and response["Location"].startswith(reverse("admin:login"))


def test_staff_need_the_permission_to_view_conversations(client):
    staff = get_user_model().objects.create_user("staff", password="staff-pass-123", is_staff=True)
    client.force_login(staff)
    assert client.get(reverse("admin:dispatch_operations")).status_code == 403
    assert client.get(reverse("admin:dispatch_operations_data")).status_code == 403
    assert reverse("admin:dispatch_operations") not in client.get(reverse("admin:index")).content.decode()

    staff.user_permissions.add(Permission.objects.get(codename="view_conversation"))
    assert client.get(reverse("admin:dispatch_operations")).status_code == 200


def test_the_admin_index_and_the_conversation_list_link_to_it(admin_client):
    url = reverse("admin:dispatch_operations")
    assert url in admin_client.get(reverse("admin:index")).content.decode()
    assert url in admin_client.get(reverse("admin:marketplace_conversation_changelist")).content.decode()
    assert url in admin_client.get(reverse("admin:dispatch_live")).content.decode()


# --- admin actions and filters --------------------------------------------------------------------


def test_the_sla_filter_lists_the_conversations_over_the_target(admin_client, live_marketplace):
    html = admin_client.get(reverse("admin:marketplace_conversation_changelist"), {"sla": "breaching"}).content
    listed = {c.pk for c in Conversation.objects.all() if c.pk.encode() in html}
    assert listed == {live_marketplace["urgent"].pk, live_marketplace["anyone"].pk}


def test_suspending_an_agent_passes_its_work_on(admin_client, escalate, make_agent, recorded_jobs):
    agent = make_agent()
    conversation = escalate(language="en", topic="billing")
    offer = dispatch_offers.offer_create(conversation_id=conversation.pk, agent_id=agent.pk)
    dispatch_offers.offer_accept(offer_id=offer.pk, agent=agent)

    response = admin_client.post(
        reverse("admin:marketplace_agent_changelist"),
        {"action": "suspend", "_selected_action": [agent.pk]},
        follow=True,
    )

    assert "Suspended 1 agent" in response.content.decode()
    agent.refresh_from_db()
    conversation.refresh_from_db()
    assert (agent.approval, agent.status, agent.active_count) == ("suspended", "offline", 0)
    assert conversation.status == "queued" and conversation.assigned_agent_id is None
    assert Assignment.objects.get(conversation=conversation).end_reason == "requeued"


def test_suspending_withdraws_an_open_offer(admin_client, escalate, make_agent, recorded_jobs):
    agent = make_agent()
    conversation = escalate(language="en", topic="billing")
    offer = dispatch_offers.offer_create(conversation_id=conversation.pk, agent_id=agent.pk)

    admin_client.post(
        reverse("admin:marketplace_agent_changelist"), {"action": "suspend", "_selected_action": [agent.pk]}
    )

    offer.refresh_from_db()
    conversation.refresh_from_db()
    assert offer.state == "revoked" and conversation.status == "queued"


def test_approve_action(admin_client, make_agent):
    agent = make_agent(online=False)
    Agent.objects.filter(pk=agent.pk).update(approval="pending")
    admin_client.post(
        reverse("admin:marketplace_agent_changelist"), {"action": "approve", "_selected_action": [agent.pk]}
    )
    assert Agent.objects.get(pk=agent.pk).approval == "approved"


def test_agents_filter_by_language_and_skill(admin_client, make_agent):
    make_agent(username="svenska", languages=("sv",), skills=("refunds",))
    make_agent(username="english", languages=("en",), skills=("billing",))
    url = reverse("admin:marketplace_agent_changelist")

    by_language = admin_client.get(url, {"language": "sv"}).content.decode()
    by_skill = admin_client.get(url, {"skill": "billing"}).content.decode()

    assert "svenska" in by_language and "english (" not in by_language
    assert "english" in by_skill and "svenska" not in by_skill


def test_dispute_action_on_a_transfer_disputes_its_earning(admin_client, make_agent, now):
    agent = make_agent()
    earning = Earning.objects.create(
        agent=agent, kind="resolution", amount=500, currency="usd", state="released", payable_at=now
    )
    transfer = Transfer.objects.create(
        agent=agent, earning=earning, amount=500, currency="usd", state="pending", hold_reason="no_account"
    )

    response = admin_client.post(
        reverse("admin:payouts_transfer_changelist"),
        {"action": "dispute", "_selected_action": [transfer.pk]},
        follow=True,
    )

    assert "Disputed the earnings of 1 transfer" in response.content.decode()
    earning.refresh_from_db()
    transfer.refresh_from_db()
    assert earning.state == "disputed" and transfer.state == "failed"


@pytest.mark.parametrize(
    ("name", "query"),
    [
        ("admin:dispatch_offer_changelist", {"state__exact": "declined"}),
        ("admin:marketplace_callbackevent_changelist", {"state__exact": "dead"}),
        ("admin:marketplace_conversation_changelist", {"outcome__exact": "resolved", "q": "billing"}),
        ("admin:payouts_transfer_changelist", {"state__exact": "failed", "q": "english"}),
        ("admin:payouts_stripeevent_changelist", {"processed_at__isempty": "1"}),
    ],
)
def test_list_filters_and_search_open(admin_client, live_marketplace, name, query):
    assert admin_client.get(reverse(name), query).status_code == 200
