"""Dispatch's writes, one module per room, one function per verb.

- `escalations`: what the bot starts and ends (escalate, a customer's message, cancel, rate) and
  the queue updates it is sent;
- `matching`: which waiting conversation goes to which free agent;
- `offers`: an offer's life, from its quote to accepted, declined, expired or withdrawn;
- `conversations`: the conversation with its agent (messages, resolution, re-queue, reassign, reopen);
- `presence`: status, sockets, the grace period, force offline and suspend;
- `errors`: the conflicts they raise.

Callers import the room they need (`from dispatch.services import offers`). The lock order is
stated once, in core.locks.
"""
