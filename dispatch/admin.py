"""Dispatch in admin: offers, ranking weights, the live page of the queue and the agents, and the operations page."""

from __future__ import annotations

from dataclasses import asdict
from datetime import timedelta
from typing import Any

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import F, QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html

from core.display import format_money, format_when
from core.errors import ApiError
from marketplace.admin import AgentAdmin, ConversationAdmin, ReadOnlyAdmin, ReadOnlyInline
from marketplace.models import Agent, Conversation, ConversationEvent
from marketplace.services import ConversationClosed

from . import charts, ops
from .models import (
    AgentConnection,
    ConversationNote,
    ConversationTransfer,
    DispatchWeights,
    HelpRequest,
    Offer,
    ServerHeartbeat,
)
from .services import conversations, escalations, notes, presence, supervision

REFRESH_SECONDS = 5


@admin.register(Offer)
class OfferAdmin(ReadOnlyAdmin):
    list_display = ("id", "conversation_id", "agent_name", "state", "pay", "created")
    list_filter = ("state", "conversation__language", "conversation__priority")
    search_fields = ("id", "conversation__id", "conversation__external_id", "agent__display_name", "agent__id")
    list_select_related = ("conversation", "agent")
    date_hierarchy = "created_at"

    @admin.display(description="Agent", ordering="agent__display_name")
    def agent_name(self, offer: Offer) -> str:
        return offer.agent.display_name

    @admin.display(description="Pay", ordering="pay_amount")
    def pay(self, offer: Offer) -> str:
        return format_money(offer.pay_amount, offer.pay_currency)

    @admin.display(description="Created", ordering="created_at")
    def created(self, offer: Offer) -> str:
        return format_when(offer.created_at)


@admin.register(ConversationTransfer)
class ConversationTransferAdmin(ReadOnlyAdmin):
    list_display = ("id", "conversation_id", "from_agent", "target", "state", "fallback_reason", "handling", "created")
    list_filter = ("state", "fallback_reason")
    search_fields = ("id", "conversation__id", "from_agent__display_name", "to_agent__display_name", "note")
    list_select_related = ("from_agent", "to_agent")
    date_hierarchy = "created_at"

    @admin.display(description="To")
    def target(self, transfer: ConversationTransfer) -> str:
        queue = " / ".join(filter(None, [transfer.language, *transfer.skills])) or "general"
        if transfer.to_agent is None:
            return f"queue: {queue}"
        named = transfer.to_agent.display_name
        return f"{named}, then queue: {queue}" if transfer.fallback_reason else named

    @admin.display(description="Handling share", ordering="handling_amount")
    def handling(self, transfer: ConversationTransfer) -> str:
        return format_money(transfer.handling_amount, transfer.handling_currency or settings.PLATFORM_CURRENCY)

    @admin.display(description="Created", ordering="created_at")
    def created(self, transfer: ConversationTransfer) -> str:
        return format_when(transfer.created_at)


class ConversationTransferInline(ReadOnlyInline):
    """A conversation's transfers on its admin page, beside its event log (`transfer.requested`, `transferred`)."""

    model = ConversationTransfer
    fk_name = "conversation"
    fields = ("created_at", "from_agent", "to_agent", "language", "skills", "note", "state", "fallback_reason")
    show_change_link = True


@admin.register(DispatchWeights)
class DispatchWeightsAdmin(admin.ModelAdmin):
    list_display = ("fairness", "quality", "reliability", "skill_bonus", "idle_half_seconds", "updated_at")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return not DispatchWeights.objects.exists()  # one row


@admin.register(AgentConnection)
class AgentConnectionAdmin(ReadOnlyAdmin):
    list_display = ("agent", "server_id", "opened_at")
    list_filter = ("server_id",)
    search_fields = ("agent__display_name", "agent__id", "server_id")


@admin.register(ServerHeartbeat)
class ServerHeartbeatAdmin(ReadOnlyAdmin):
    list_display = ("server_id", "seen_at")


class ReassignForm(forms.Form):
    agent = forms.ModelChoiceField(
        queryset=Agent.objects.filter(approval=Agent.Approval.APPROVED).order_by("display_name"),
        help_text="Given the conversation now, without an offer, if it has a free slot.",
    )


def _run(request: HttpRequest, what: str, fn: Any, *args: Any, **kwargs: Any) -> bool:
    try:
        fn(*args, **kwargs)
        return True
    except ApiError as exc:
        messages.warning(request, f"{what}: {exc.detail}")
        return False


class SlaBreachFilter(admin.SimpleListFilter):
    """Conversations waiting longer than the SLA's answer target right now (the operations page links here)."""

    title = "SLA"
    parameter_name = "sla"

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        return [("breaching", f"Waiting over {settings.SLA_ANSWER_SECONDS:g} s now")]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> QuerySet[Conversation]:
        if self.value() != "breaching":
            return queryset
        threshold = timezone.now() - timedelta(seconds=settings.SLA_ANSWER_SECONDS)
        late = ops.waiting_since_annotated().filter(waiting_since__lt=threshold).values("pk")
        return queryset.filter(pk__in=late)


class ConversationNoteInline(ReadOnlyInline):
    """Internal notes (agents' notes, help requests, whispers, transfer notes): never the bot's."""

    model = ConversationNote
    fk_name = "conversation"
    fields = ("created_at", "kind", "author_name", "text")
    verbose_name_plural = "internal notes (the customer and the bot never see these)"


class SuperviseForm(forms.Form):
    text = forms.CharField(widget=forms.Textarea(attrs={"rows": 2}), required=False, max_length=notes.NOTE_MAX_LENGTH)
    to = forms.ChoiceField(label="Give it to", required=False, choices=())

    def __init__(self, *args: Any, conversation: Conversation, own_agent: Agent | None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The supervisor (when an agent too), the queue, or an agent online with a free slot.
        free = (
            Agent.objects.filter(approval=Agent.Approval.APPROVED, status=Agent.Status.ONLINE)
            .filter(active_count__lt=F("capacity"))
            .exclude(pk__in=[conversation.assigned_agent_id, own_agent.pk if own_agent else None])
            .order_by("display_name")[:200]
        )
        choices = [(own_agent.pk, f"Me, as agent {own_agent.display_name}")] if own_agent else []
        choices.append(("queue", "Back to the queue, first in line, for the next free agent"))
        choices += [(agent.pk, f"{agent.display_name} ({agent.active_count}/{agent.capacity})") for agent in free]
        self.fields["to"].choices = choices


# What a supervisor can do from the supervise page: the service and the message it leaves.
SUPERVISOR_ACTIONS = {
    "whisper": (supervision.supervisor_whisper, "Whispered to the agent."),
    "message": (supervision.supervisor_message, "Sent to the customer; you are in the chat."),
    "take_over": (supervision.conversation_take_over, "Taken over."),
}


class LiveConversationAdmin(ConversationAdmin):
    actions = ("cancel", "requeue_front", "reassign")
    list_filter = (SlaBreachFilter, *ConversationAdmin.list_filter)
    inlines = (*ConversationAdmin.inlines, ConversationTransferInline, ConversationNoteInline)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [*super().get_readonly_fields(request, obj), "supervise"]

    @admin.display(description="Supervise")
    def supervise(self, conversation: Conversation) -> str:
        url = reverse("admin:dispatch_supervise", args=[conversation.pk])
        return format_html('<a href="{}">Notes, whisper, join or take over</a>', url)

    @admin.action(description="Cancel selected conversations")
    def cancel(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        done = 0
        for conversation in queryset:
            try:
                escalations.conversation_cancel(
                    conversation_id=conversation.pk, actor=f"admin:{request.user}", reason="admin"
                )
                done += 1
            except ConversationClosed:
                self.message_user(request, f"{conversation.pk} is already closed.", messages.WARNING)
        self.message_user(request, f"Cancelled {done} conversation(s).", messages.SUCCESS)

    @admin.action(description="Re-queue at the front (withdraws the offer or takes it from the agent)")
    def requeue_front(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        actor = f"admin:{request.user}"
        done = sum(
            _run(
                request, c.pk, conversations.conversation_requeue, conversation_id=c.pk, actor=actor, reason="requeued"
            )
            for c in queryset
        )
        self.message_user(request, f"Re-queued {done} conversation(s).", messages.SUCCESS)

    @admin.action(description="Reassign to an agent…")
    def reassign(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> HttpResponse | None:
        if "apply" in request.POST:
            form = ReassignForm(request.POST)
            if form.is_valid():
                agent = form.cleaned_data["agent"]
                done = sum(
                    _run(
                        request,
                        c.pk,
                        conversations.conversation_reassign,
                        conversation_id=c.pk,
                        agent_id=agent.pk,
                        actor=f"admin:{request.user}",
                    )
                    for c in queryset
                )
                self.message_user(request, f"Gave {done} conversation(s) to {agent.display_name}.", messages.SUCCESS)
                return None
        else:
            form = ReassignForm()
        return TemplateResponse(
            request,
            "admin/dispatch/reassign.html",
            {**self.admin_site.each_context(request), "form": form, "conversations": queryset, "title": "Reassign"},
        )

    def get_urls(self) -> list[Any]:
        view = self.admin_site.admin_view
        return [
            path("live/", view(self.live_view), name="dispatch_live"),
            path("live/<str:conversation_id>/supervise/", view(self.supervise_view), name="dispatch_supervise"),
            path("operations/", view(self.operations_view), name="dispatch_operations"),
            path("operations/data/", view(self.operations_data), name="dispatch_operations_data"),
            *super().get_urls(),
        ]

    def operations_view(self, request: HttpRequest) -> HttpResponse:
        """The operations page; `?fragment=1` is just its figures, which the page's script fetches to refresh.

        admin_view already marks every answer never_cache (no-store).
        """
        if not self.has_view_permission(request):
            raise PermissionDenied
        snapshot = ops.operations_snapshot()
        context = {
            "snapshot": snapshot,
            "charts": charts.operations_charts(snapshot),
            "refresh_seconds": REFRESH_SECONDS,
            "breach_list_limit": ops.BREACH_LIST_LIMIT,
        }
        if request.GET.get("fragment"):
            response = TemplateResponse(request, "admin/dispatch/operations_figures.html", context)
            response["X-Ops-Fragment"] = "1"
        else:
            context = {**self.admin_site.each_context(request), **context, "title": "Operations"}
            response = TemplateResponse(request, "admin/dispatch/operations.html", context)
        return response

    def operations_data(self, request: HttpRequest) -> JsonResponse:
        """The same figures as JSON (see docs/DISPATCH.md, "Operations page")."""
        if not self.has_view_permission(request):
            raise PermissionDenied
        return JsonResponse(asdict(ops.operations_snapshot()))

    def live_view(self, request: HttpRequest) -> HttpResponse:
        if not self.has_view_permission(request):  # as the operations pages: staff alone is not enough
            raise PermissionDenied
        now = timezone.now()
        waiting = list(
            Conversation.objects.filter(status__in=Conversation.WAITING)
            .select_related("integration")
            .order_by("queue_key", "id")[:200]
        )
        online = list(
            Agent.objects.exclude(status=Agent.Status.OFFLINE)
            .order_by("status", "-active_count", "display_name")
            .prefetch_related("connections")[:500]
        )
        context = {
            **self.admin_site.each_context(request),
            "title": "Live queue and agents",
            "waiting": [(c, int((now - c.created_at).total_seconds())) for c in waiting],
            "agents": online,
            "free_slots": sum(max(a.capacity - a.active_count, 0) for a in online if a.status == Agent.Status.ONLINE),
            "open_offers": Offer.objects.filter(state=Offer.State.PENDING).count(),
            "assigned": Conversation.objects.filter(status=Conversation.Status.ASSIGNED).count(),
            "refresh_seconds": 5,
            "help_requests": [(h, int((now - h.created_at).total_seconds())) for h in open_help_requests()],
        }
        return TemplateResponse(request, "admin/dispatch/live.html", context)

    def supervise_view(self, request: HttpRequest, conversation_id: str) -> HttpResponse:
        """One conversation for a supervisor: its chat, its notes and help requests; whisper, join, take over.

        Every POST is one action through its service (CSRF-protected by admin_view), then back here.
        """
        if not self.has_view_permission(request):
            raise PermissionDenied
        conversation = get_object_or_404(
            Conversation.objects.select_related("assigned_agent", "integration"), pk=conversation_id
        )
        own_agent = Agent.objects.filter(user=request.user, approval=Agent.Approval.APPROVED).first()
        form = SuperviseForm(request.POST or None, conversation=conversation, own_agent=own_agent)
        if request.method == "POST":
            if not self.has_change_permission(request, conversation):
                raise PermissionDenied
            action = SUPERVISOR_ACTIONS.get(request.POST.get("do", ""))
            if action is None:
                messages.warning(request, "Choose whisper, message or take over.")
            elif form.is_valid():
                service, done = action
                take_over = service is supervision.conversation_take_over
                given = {"to": form.cleaned_data["to"]} if take_over else {"text": form.cleaned_data["text"]}
                if _run(request, "Not done", service, conversation_id=conversation.pk, user=request.user, **given):
                    messages.success(request, done)
                    return HttpResponseRedirect(request.path)
            else:
                messages.warning(request, f"Not done: {form.errors.as_text()}")
        context = {
            **self.admin_site.each_context(request),
            "title": f"Supervise {conversation.pk}",
            "conversation": conversation,
            "chat": list(conversation.messages.select_related("agent")),
            "notes": list(conversation.notes.all()),
            "help_requests": list(conversation.help_requests.filter(answered_at=None).select_related("note")),
            "log": list(
                ConversationEvent.objects.filter(conversation=conversation).filter(
                    kind__in=["help_requested", "supervisor_whisper", "supervisor_joined", "supervisor_take_over"]
                )
            ),
            "own_agent": own_agent,
            "form": form,
            "can_act": self.has_change_permission(request, conversation) and not conversation.is_closed,
        }
        return TemplateResponse(request, "admin/dispatch/supervise.html", context)

    def changelist_view(self, request: HttpRequest, extra_context: dict[str, Any] | None = None) -> HttpResponse:
        links = {"live_url": reverse("admin:dispatch_live"), "operations_url": reverse("admin:dispatch_operations")}
        return super().changelist_view(request, {**(extra_context or {}), **links})


def open_help_requests() -> list[HelpRequest]:
    """The help flags on the live page: asked, not yet answered, on a conversation still open."""
    return list(
        HelpRequest.objects.filter(answered_at=None)
        .exclude(conversation__status__in=Conversation.CLOSED)
        .select_related("conversation", "agent", "note")
        .order_by("created_at")[:100]
    )


class LiveAgentAdmin(AgentAdmin):
    actions = ("approve", "suspend", "force_offline")

    @admin.action(
        description="Suspend selected agents (offline; their conversations go back to the front of the queue)"
    )
    def suspend(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        actor = f"admin:{request.user}"
        done = sum(_run(request, a.pk, presence.agent_suspend, agent_id=a.pk, actor=actor) for a in queryset)
        self.message_user(request, f"Suspended {done} agent(s).", messages.WARNING)

    @admin.action(description="Force offline (their conversations go back to the front of the queue)")
    def force_offline(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        for agent in queryset:
            presence.agent_force_offline(agent_id=agent.pk, actor=f"admin:{request.user}")
        self.message_user(request, f"Took {queryset.count()} agent(s) offline.", messages.WARNING)


# The marketplace registers plain admins; dispatch adds its actions and the live page.
admin.site.unregister(Conversation)
admin.site.register(Conversation, LiveConversationAdmin)
admin.site.unregister(Agent)
admin.site.register(Agent, LiveAgentAdmin)
