from django.apps import AppConfig


class DispatchConfig(AppConfig):
    name = "dispatch"
    verbose_name = "Dispatch"

    def ready(self) -> None:
        from marketplace import access

        from . import events

        # Revoked tokens and sessions (marketplace) close the sockets opened with them (here).
        access.credentials_revoked.connect(events.on_credentials_revoked, dispatch_uid="dispatch-close-revoked")
