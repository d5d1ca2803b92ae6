from core.models import Heartbeat


def heartbeat_latest() -> Heartbeat | None:
    return Heartbeat.objects.order_by("-created_at").first()
