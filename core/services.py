import socket
from datetime import timedelta

from django.db import transaction
from django.utils import timezone

from core.models import Heartbeat

HEARTBEAT_RETENTION = timedelta(days=1)


@transaction.atomic
def heartbeat_record(*, source: str, worker: str | None = None) -> Heartbeat:
    beat = Heartbeat.objects.create(source=source[:64], worker=worker or socket.gethostname())
    Heartbeat.objects.filter(created_at__lt=timezone.now() - HEARTBEAT_RETENTION).delete()
    return beat
