"""Thin Celery tasks; each calls one service."""

from celery import shared_task


@shared_task(name="marketplace.tasks.deliver_callbacks")
def deliver_callbacks(conversation_id: str) -> int:
    from .callbacks import callbacks_deliver  # callbacks enqueues these tasks

    return callbacks_deliver(conversation_id=conversation_id)


@shared_task(name="marketplace.tasks.sweep_callbacks")
def sweep_callbacks() -> int:
    from .callbacks import callbacks_sweep

    return callbacks_sweep()
