"""Thin Celery tasks; each calls one service (imported late: services enqueue these tasks)."""

from celery import shared_task


@shared_task(name="dispatch.tasks.dispatch_conversation")
def dispatch_conversation(conversation_id: str) -> str | None:
    from .services.matching import conversation_dispatch

    offer = conversation_dispatch(conversation_id=conversation_id)
    return offer.pk if offer else None


@shared_task(name="dispatch.tasks.dispatch_agent")
def dispatch_agent(agent_id: str) -> str | None:
    from .services.matching import agent_dispatch

    offer = agent_dispatch(agent_id=agent_id, wait_for_agent=True)  # this agent's own job: wait for its row
    return offer.pk if offer else None


@shared_task(name="dispatch.tasks.expire_offer")
def expire_offer(offer_id: str) -> bool:
    from .services.offers import offer_expire

    return offer_expire(offer_id=offer_id)


@shared_task(name="dispatch.tasks.release_if_gone")
def release_if_gone(agent_id: str) -> bool:
    from .services.presence import presence_release_if_gone

    return presence_release_if_gone(agent_id=agent_id)


@shared_task(name="dispatch.tasks.sweep_offers")
def sweep_offers() -> int:
    from .services.offers import offers_sweep

    return offers_sweep()


@shared_task(name="dispatch.tasks.sweep_dispatch")
def sweep_dispatch() -> int:
    from .services.matching import dispatch_sweep

    return dispatch_sweep()


@shared_task(name="dispatch.tasks.sweep_presence")
def sweep_presence() -> int:
    from .services.presence import presence_sweep

    return presence_sweep()


@shared_task(name="dispatch.tasks.push_queue_updates")
def push_queue_updates() -> int:
    from .services.escalations import queue_updates_push

    return queue_updates_push()


# Dispatch runs the floor (it measures engaged time; payouts tops up). Celery beat's database rows
# follow the schedule in config/settings.py when beat starts; the embedded runner imports it by this name.
@shared_task(name="dispatch.tasks.close_floor_weeks")
def close_floor_weeks() -> int:
    from .floor import floor_close_due_weeks

    return floor_close_due_weeks()
