from celery import shared_task

from core import services


@shared_task(name="core.tasks.heartbeat_record")
def heartbeat_record(source: str = "manual") -> int:
    """Trivial health task: records that a worker ran it. Returns the heartbeat's id."""
    return services.heartbeat_record(source=source, worker=heartbeat_record.request.hostname).id
