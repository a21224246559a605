"""Admins steer the live marketplace: the live page and the actions, through the services."""

from __future__ import annotations

import pytest
from django.contrib.admin.utils import quote
from django.urls import reverse

from dispatch.models import Offer
from dispatch.services import offers
from marketplace.models import Agent, Conversation

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def assigned(escalate, make_agent, recorded_jobs):
    agent = make_agent()
    conversation = escalate(language="en", topic="billing")
    recorded_jobs.run("dispatch_conversation")
    offers.offer_accept(offer_id=Offer.objects.get(conversation=conversation).pk, agent=agent)
    recorded_jobs.clear()
    return conversation, agent


def test_the_live_page_shows_the_queue_and_the_agents(admin_client, escalate, make_agent, recorded_jobs):
    make_agent(username="zoe")
    waiting = escalate(language="sv", priority="urgent")
    response = admin_client.get(reverse("admin:dispatch_live"))
    assert response.status_code == 200
    html = response.content.decode()
    assert waiting.pk in html and "zoe" in html and "urgent" in html
    assert 'http-equiv="refresh"' in html
    # Its links open the right rows (admin escapes "_" in primary keys).
    link = reverse("admin:marketplace_conversation_change", args=[quote(waiting.pk)])
    assert link in html
    assert admin_client.get(link).status_code == 200


def test_requeue_action_takes_it_from_the_agent(admin_client, assigned):
    conversation, agent = assigned
    admin_client.post(
        reverse("admin:marketplace_conversation_changelist"),
        {"action": "requeue_front", "_selected_action": [conversation.pk]},
    )
    conversation.refresh_from_db()
    agent.refresh_from_db()
    assert conversation.status == "queued" and agent.active_count == 0


def test_reassign_action_asks_for_the_agent_then_moves_it(admin_client, assigned, make_agent):
    conversation, first = assigned
    second = make_agent(username="second")
    url = reverse("admin:marketplace_conversation_changelist")

    form = admin_client.post(url, {"action": "reassign", "_selected_action": [conversation.pk]})
    assert form.status_code == 200 and b"second" in form.content

    admin_client.post(
        url, {"action": "reassign", "_selected_action": [conversation.pk], "apply": "1", "agent": second.pk}
    )
    conversation.refresh_from_db()
    assert conversation.assigned_agent_id == second.pk
    assert Agent.objects.get(pk=first.pk).active_count == 0


def test_reassign_to_a_full_agent_is_refused_with_a_message(admin_client, assigned, make_agent, escalate):
    conversation, _ = assigned
    busy = make_agent(username="busy")
    Agent.objects.filter(pk=busy.pk).update(active_count=1)
    response = admin_client.post(
        reverse("admin:marketplace_conversation_changelist"),
        {"action": "reassign", "_selected_action": [conversation.pk], "apply": "1", "agent": busy.pk},
        follow=True,
    )
    assert b"no free capacity" in response.content
    assert Conversation.objects.get(pk=conversation.pk).assigned_agent_id != busy.pk


def test_force_offline_action(admin_client, assigned):
    conversation, agent = assigned
    admin_client.post(
        reverse("admin:marketplace_agent_changelist"), {"action": "force_offline", "_selected_action": [agent.pk]}
    )
    agent.refresh_from_db()
    conversation.refresh_from_db()
    assert agent.status == "offline" and conversation.status == "queued"


def test_the_live_page_needs_the_same_permission_as_the_operations_pages(client):
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Permission

    # given: staff without the permission to view conversations
    staff = get_user_model().objects.create_user("staff-live", password="staff-pass-123", is_staff=True)
    client.force_login(staff)
    # then: the live page is refused, as the operations page is
    assert client.get(reverse("admin:dispatch_operations")).status_code == 403
    assert client.get(reverse("admin:dispatch_live")).status_code == 403

    staff.user_permissions.add(Permission.objects.get(codename="view_conversation"))
    assert client.get(reverse("admin:dispatch_live")).status_code == 200
