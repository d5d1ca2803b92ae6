from django.db import models


class Heartbeat(models.Model):
    """Written by the `core.tasks.heartbeat_record` task: proof that a worker consumes tasks.

    `/api/health` shows the newest one; old rows are pruned by the task itself.
    """

    source = models.CharField(max_length=64)
    worker = models.CharField(max_length=255)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]

    def __str__(self) -> str:
        return f"{self.source} on {self.worker} at {self.created_at:%Y-%m-%d %H:%M:%S}Z"
