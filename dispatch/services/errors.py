"""The conflicts dispatch's verbs raise (409 over REST, an error frame on the socket)."""

from __future__ import annotations

from rest_framework import status

from core.errors import ApiError, Conflict


class OfferNotOpen(Conflict):
    default_code = "offer_not_open"
    default_detail = "The offer is no longer open."


class AgentUnavailable(Conflict):
    default_code = "agent_unavailable"
    default_detail = "The agent cannot take this conversation now."


class NotAssignedToAgent(Conflict):
    default_code = "not_assigned"
    default_detail = "The conversation is not assigned to this agent."


class NotApproved(Conflict):
    default_code = "not_approved"
    default_detail = "Only approved agents can go online."


class PayoutsNotReady(Conflict):
    default_code = "payouts_not_ready"
    default_detail = "Finish payouts onboarding before going online."


class NotReopenable(Conflict):
    default_code = "not_reopenable"
    default_detail = "Only a resolved conversation can be reopened, within the reopen window."


class TooManySockets(Conflict):
    default_code = "too_many_sockets"
    default_detail = "Too many sockets open for this agent: close one first."


class InvalidNote(ApiError):
    default_code = "invalid_request"
    default_detail = "A note is a non-empty text."


class ConversationIsClosed(Conflict):
    default_code = "conversation_closed"
    default_detail = "The conversation is closed."


# --- transfers (conversation.transfer) ---------------------------------------------------------


class UnknownAgent(ApiError):
    status_code = status.HTTP_404_NOT_FOUND
    default_code = "unknown_agent"
    default_detail = "No agent with that username."


class AgentOffline(Conflict):
    default_code = "agent_offline"
    default_detail = "That agent is not online: transfer to another agent or to a queue."


class TransferToSelf(Conflict):
    default_code = "transfer_to_self"
    default_detail = "You cannot transfer a conversation to yourself."


class TransferPending(Conflict):
    default_code = "transfer_pending"
    default_detail = "A transfer of this conversation is already waiting for an answer."
