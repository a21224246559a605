from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from marketplace import services
from marketplace.models import Conversation


@pytest.fixture
def escalate(integration) -> Callable[..., Conversation]:
    counter = iter(range(1, 100_000))

    def make(**fields: Any) -> Conversation:
        fields.setdefault("external_id", f"conv-{next(counter)}")
        conversation, _ = services.conversation_escalate(
            integration=integration, data=services.EscalationInput(**fields)
        )
        return conversation

    return make
