"""The app goes back to its login page when the agent's login ends elsewhere (a password change,
an admin's action): its socket is closed with 4401 and it does not try to reconnect."""

from __future__ import annotations

import pytest
from django.contrib.auth import get_user_model
from playwright.sync_api import expect

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.django_db(transaction=True)]


def test_a_password_change_sends_the_app_back_to_its_login_page(phone, make_agent):
    page = phone
    agent = make_agent(username="maria", online=False)
    page.goto("/app/")
    page.get_by_label("Username").fill("maria")
    page.get_by_label("Password").fill("test-pass-123")
    page.get_by_role("button", name="Log in").click()
    expect(page.locator('body[data-connected="true"]')).to_have_count(1)
    # when: the password is changed (another device, or an admin)
    user = get_user_model().objects.get(pk=agent.user_id)
    user.set_password("another-pass-456")
    user.save()
    # then: the app is back on its login page, within seconds
    expect(page).to_have_url("/app/login", timeout=5_000)
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
