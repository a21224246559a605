from django.contrib import admin

from marketplace.admin import ReadOnlyAdmin

from .models import Offer


@admin.register(Offer)
class OfferAdmin(ReadOnlyAdmin):
    list_display = ("id", "conversation", "agent", "state", "pay_amount", "pay_currency", "created_at", "expires_at")
    list_filter = ("state",)
    search_fields = ("id", "conversation__id", "agent__display_name")
    list_select_related = ("conversation", "agent")
