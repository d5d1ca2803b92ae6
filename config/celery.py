"""The Celery app, `config.celery:app`. Configuration lives in settings (CELERY_*)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

app = Celery("hfbill")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
