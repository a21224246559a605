"""Admin for every marketplace model. State changes go through the services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib import admin, messages
from django.db import connection
from django.db.models import QuerySet
from django.http import HttpRequest

from core.display import format_when

from . import callbacks, services
from .models import Agent, BotIntegration, CallbackAttempt, CallbackEvent, Conversation, ConversationEvent, Message


class ReadOnlyAdmin(admin.ModelAdmin):
    """For append-only records: viewable, never added, edited or deleted here."""

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class ReadOnlyInline(admin.TabularInline):
    extra = 0
    can_delete = False

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> Any:
        return self.fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False


class JsonListFilter(admin.SimpleListFilter):
    """Agents whose JSON list field (languages, skills) holds the chosen code."""

    field = ""

    def lookups(self, request: HttpRequest, model_admin: Any) -> list[tuple[str, str]]:
        lists = model_admin.get_queryset(request).values_list(self.field, flat=True)
        return [(code, code) for code in sorted({str(c) for codes in lists for c in (codes or [])})]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Any]) -> QuerySet[Any]:
        code = self.value()
        if not code:
            return queryset
        if connection.features.supports_json_field_contains:
            return queryset.filter(**{f"{self.field}__contains": [code]})
        # SQLite: match the quoted code in the stored JSON text (codes are plain lowercase words).
        return queryset.filter(**{f"{self.field}__icontains": f'"{code}"'})


class LanguageFilter(JsonListFilter):
    title = parameter_name = "language"
    field = "languages"


class SkillFilter(JsonListFilter):
    title = parameter_name = "skill"
    field = "skills"


def _percent(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:.0%}"


# Lists fit a 1280 px screen beside the filters (issue 11.11): short columns, long values
# (ids, JSON lists) joined or left to the detail page and to search.
admin.site.enable_nav_sidebar = False  # 300 px the lists need; the breadcrumbs and the index lead everywhere


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = (
        "display_name",
        "approval",
        "status",
        "load",
        "language_list",
        "skill_list",
        "rating",
        "resolved",
        "accepted",
    )
    list_filter = ("approval", "status", LanguageFilter, SkillFilter, "capacity")
    search_fields = ("display_name", "id", "user__username", "user__email")
    readonly_fields = (
        "id",
        "approval",
        "status",
        "status_changed_at",
        "active_count",
        "idle_since",
        "offers_received",
        "offers_accepted",
        "offers_declined",
        "offers_missed",
        "consecutive_misses",
        "resolved_count",
        "unresolved_count",
        "rating_count",
        "rating_sum",
        "created_at",
    )
    raw_id_fields = ("user",)
    actions = ("approve",)  # suspending passes work on: dispatch's (dispatch/admin.py)

    @admin.display(description="Load", ordering="active_count")
    def load(self, agent: Agent) -> str:
        return f"{agent.active_count}/{agent.capacity}"

    @admin.display(description="Languages")
    def language_list(self, agent: Agent) -> str:
        return ", ".join(map(str, agent.languages or []))

    @admin.display(description="Skills")
    def skill_list(self, agent: Agent) -> str:
        return ", ".join(map(str, agent.skills or []))

    @admin.display(description="Rating")
    def rating(self, agent: Agent) -> str:
        return "—" if agent.average_rating is None else f"{agent.average_rating:.1f}"

    @admin.display(description="Resolved")
    def resolved(self, agent: Agent) -> str:
        return _percent(agent.resolution_rate)

    @admin.display(description="Accepted")
    def accepted(self, agent: Agent) -> str:
        return _percent(agent.acceptance_rate)

    @admin.action(description="Approve selected agents")
    def approve(self, request: HttpRequest, queryset: QuerySet[Agent]) -> None:
        for agent in queryset:
            services.agent_set_approval(
                agent_id=agent.pk, approval=Agent.Approval.APPROVED, actor=f"admin:{request.user}"
            )
        self.message_user(request, f"Approved {queryset.count()} agent(s).", messages.SUCCESS)


class BotIntegrationForm(forms.ModelForm):
    class Meta:
        model = BotIntegration
        fields = (
            "name",
            "callback_url",
            "active",
            "rate_limit_per_minute",
            "rate_burst",
        )  # the rest is read-only in admin

    def _get_validation_exclusions(self) -> set[str]:
        # A callback URL is checked against CALLBACK_ALLOWED_NETWORKS when it is set, and again at every
        # delivery. Left unchanged, it is not checked again here: an operator who narrows the networks
        # can still rename or deactivate the integrations whose URLs the service now refuses.
        excluded = set(super()._get_validation_exclusions())
        if not self.instance._state.adding and "callback_url" not in self.changed_data:
            excluded.add("callback_url")
        return excluded


@admin.register(BotIntegration)
class BotIntegrationAdmin(admin.ModelAdmin):
    form = BotIntegrationForm
    list_display = ("name", "id", "callback_url", "active", "rate_limit_per_minute", "rate_burst", "created_at")
    list_filter = ("active",)
    search_fields = ("name", "id", "callback_url")
    readonly_fields = ("id", "secret", "previous_secret", "previous_secret_expires_at", "created_at")
    actions = ("rotate_secret",)

    @admin.action(description="Rotate the signing secret (the old one works for a day)")
    def rotate_secret(self, request: HttpRequest, queryset: QuerySet[BotIntegration]) -> None:
        for integration in queryset:
            services.integration_rotate_secret(integration_id=integration.pk)
        self.message_user(request, "New secrets set; share them with the bots.", messages.WARNING)


class MessageInline(ReadOnlyInline):
    model = Message
    fields = ("created_at", "role", "text", "agent", "author_name", "external_id", "client_id")


class ConversationEventInline(ReadOnlyInline):
    model = ConversationEvent
    fields = ("created_at", "kind", "from_status", "to_status", "actor", "data")


class CallbackEventInline(ReadOnlyInline):
    model = CallbackEvent
    fields = ("seq", "type", "state", "attempts", "next_attempt_at", "delivered_at", "last_error")
    show_change_link = True


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    list_display = ("id", "status", "priority", "language", "topic", "agent", "bot", "created")
    list_filter = ("status", "priority", "language", "topic", "integration", "outcome", "rating_score")
    search_fields = ("id", "external_id", "summary", "topic", "assigned_agent__display_name", "assigned_agent__id")
    date_hierarchy = "created_at"
    list_select_related = ("integration", "assigned_agent")
    inlines = (MessageInline, ConversationEventInline, CallbackEventInline)
    actions = ()  # the verbs that change a conversation are dispatch's (dispatch/admin.py)

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> list[str]:
        return [f.name for f in Conversation._meta.fields]

    @admin.display(description="Agent", ordering="assigned_agent__display_name")
    def agent(self, conversation: Conversation) -> str:
        return conversation.assigned_agent.display_name if conversation.assigned_agent else "—"

    @admin.display(description="Bot", ordering="integration__name")
    def bot(self, conversation: Conversation) -> str:
        return conversation.integration.name

    @admin.display(description="Created", ordering="created_at")
    def created(self, conversation: Conversation) -> str:
        return format_when(conversation.created_at)

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False


@admin.register(Message)
class MessageAdmin(ReadOnlyAdmin):
    list_display = ("id", "conversation", "role", "text", "created_at")
    list_filter = ("role",)
    search_fields = ("id", "conversation__id", "text", "external_id", "client_id")
    date_hierarchy = "created_at"


@admin.register(ConversationEvent)
class ConversationEventAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "conversation", "kind", "from_status", "to_status", "actor")
    list_filter = ("kind", "to_status")
    search_fields = ("conversation__id", "conversation__external_id", "actor")
    date_hierarchy = "created_at"


class CallbackAttemptInline(ReadOnlyInline):
    model = CallbackAttempt
    fields = ("number", "started_at", "duration_ms", "status_code", "ok", "error")


@admin.register(CallbackEvent)
class CallbackEventAdmin(ReadOnlyAdmin):
    list_display = ("id", "type", "conversation", "seq", "state", "attempts", "next_attempt_at", "delivered_at")
    list_filter = ("state", "type", "integration")
    search_fields = ("id", "conversation__id", "conversation__external_id", "integration__name")
    date_hierarchy = "created_at"
    inlines = (CallbackAttemptInline,)
    actions = ("retry",)

    @admin.action(description="Retry delivery (dead-lettered events get fresh attempts)")
    def retry(self, request: HttpRequest, queryset: QuerySet[CallbackEvent]) -> None:
        for event in queryset:
            callbacks.callback_retry(event_id=event.pk)
        self.message_user(request, "Delivery restarted.", messages.SUCCESS)


@admin.register(CallbackAttempt)
class CallbackAttemptAdmin(ReadOnlyAdmin):
    list_display = ("event", "number", "started_at", "duration_ms", "status_code", "ok")
    list_filter = ("ok",)
    search_fields = ("event__id",)
