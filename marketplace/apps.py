from django.apps import AppConfig


class MarketplaceConfig(AppConfig):
    name = "marketplace"
    verbose_name = "Marketplace"

    def ready(self) -> None:
        from django.contrib.auth import get_user_model
        from django.db.models.signals import post_save, pre_save

        from . import access

        user_model = get_user_model()
        pre_save.connect(access._watch_user_before_save, sender=user_model, dispatch_uid="access-watch-user")
        post_save.connect(access._revoke_after_user_save, sender=user_model, dispatch_uid="access-revoke-user")
