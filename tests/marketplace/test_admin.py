"""Admin: every model has a working page; actions go through the services."""

from __future__ import annotations

import pytest
from django.contrib import admin
from django.contrib.admin.utils import quote
from django.urls import reverse

from dispatch.services import escalations, offers
from marketplace import services
from marketplace.models import Agent, CallbackEvent, Conversation

pytestmark = pytest.mark.django_db


@pytest.fixture
def populated(integration, make_agent):
    agent = make_agent()
    conversation, _ = escalations.conversation_escalate(
        integration=integration,
        data=services.EscalationInput(external_id="adm", transcript=[{"role": "bot", "text": "hi"}]),
    )
    escalations.conversation_add_customer_message(conversation=conversation, text="hello", external_message_id="x")
    offer = offers.offer_create(conversation_id=conversation.pk, agent_id=agent.pk)
    offers.offer_accept(offer_id=offer.pk, agent=agent)
    return conversation


def test_every_registered_model_lists_and_opens(admin_client, populated):
    for model in admin.site._registry:
        meta = model._meta
        listing = admin_client.get(reverse(f"admin:{meta.app_label}_{meta.model_name}_changelist"))
        assert listing.status_code == 200, (meta.label, listing.get("Location"))
        instance = model.objects.first()
        if instance is not None:
            url = reverse(f"admin:{meta.app_label}_{meta.model_name}_change", args=[quote(instance.pk)])
            detail = admin_client.get(url)
            messages = [str(m) for m in detail.wsgi_request._messages] if detail.status_code != 200 else []
            assert detail.status_code == 200, (meta.label, instance.pk, detail.get("Location"), messages)


def test_conversation_states_are_read_only_in_admin(admin_client, populated):
    url = reverse("admin:marketplace_conversation_change", args=[quote(populated.pk)])
    admin_client.post(url, {"status": "resolved"})
    populated.refresh_from_db()
    assert populated.status == "assigned"


def test_suspend_action_takes_the_agent_offline(admin_client, make_agent):
    agent = make_agent()
    response = admin_client.post(
        reverse("admin:marketplace_agent_changelist"), {"action": "suspend", "_selected_action": [agent.pk]}
    )
    assert response.status_code == 302
    agent.refresh_from_db()
    assert (agent.approval, agent.status) == ("suspended", "offline")


def test_cancel_action_uses_the_service(admin_client, populated):
    admin_client.post(
        reverse("admin:marketplace_conversation_changelist"), {"action": "cancel", "_selected_action": [populated.pk]}
    )
    populated.refresh_from_db()
    assert populated.status == "cancelled"
    assert Agent.objects.get().active_count == 0
    assert CallbackEvent.objects.filter(type="conversation.cancelled").exists()


def test_retry_action_revives_a_dead_callback(admin_client, populated):
    event = CallbackEvent.objects.filter(conversation=populated).first()
    CallbackEvent.objects.filter(pk=event.pk).update(state="dead", attempts=12, max_attempts=12)
    admin_client.post(
        reverse("admin:marketplace_callbackevent_changelist"), {"action": "retry", "_selected_action": [event.pk]}
    )
    event.refresh_from_db()
    assert (event.state, event.attempts, event.max_attempts) == ("pending", 12, 24)
    assert Conversation.objects.get().status == "assigned"


def test_the_integration_form_refuses_an_internal_callback_url(admin_client, settings):
    from marketplace.models import BotIntegration

    settings.CALLBACK_ALLOWED_NETWORKS = []
    form = {"name": "sneaky", "callback_url": "http://169.254.169.254/latest/meta-data/", "active": "on"}

    response = admin_client.post(reverse("admin:marketplace_botintegration_add"), form)

    assert response.status_code == 200  # the form again, with the error on the field
    errors = response.context["adminform"].form.errors
    assert "not a public address" in " ".join(errors["callback_url"])
    assert not BotIntegration.objects.exists()


def test_editing_an_integration_in_admin_checks_the_url_again(admin_client, integration, settings):
    settings.CALLBACK_ALLOWED_NETWORKS = []
    url = reverse("admin:marketplace_botintegration_change", args=[quote(integration.pk)])

    response = admin_client.post(url, {"name": integration.name, "callback_url": "http://10.0.0.7/cb", "active": "on"})

    assert response.status_code == 200
    assert "callback_url" in response.context["adminform"].form.errors
    integration.refresh_from_db()
    assert integration.callback_url == "http://127.0.0.1:9/callbacks"


def test_an_integration_whose_stored_url_is_no_longer_allowed_can_still_be_deactivated(
    admin_client, integration, settings
):
    """Tightening CALLBACK_ALLOWED_NETWORKS must not lock the admin out of the integrations it now refuses."""
    settings.CALLBACK_ALLOWED_NETWORKS = []  # its loopback URL is no longer allowed (deliveries refuse it)
    url = reverse("admin:marketplace_botintegration_change", args=[quote(integration.pk)])

    response = admin_client.post(url, {"name": "old bot", "callback_url": integration.callback_url, "active": ""})

    assert response.status_code == 302, response.context["adminform"].form.errors
    integration.refresh_from_db()
    assert (integration.name, integration.active) == ("old bot", False)
