import redis
from django.conf import settings
from django.db import connection
from drf_spectacular.utils import OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from core.selectors import heartbeat_latest


def _check_database() -> str:
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
        return "ok"
    except Exception:
        return "error"


def _check_broker() -> str:
    try:
        redis.Redis.from_url(settings.REDIS_URL, socket_timeout=1, socket_connect_timeout=1).ping()
        return "ok"
    except redis.RedisError:
        return "error"


CHECK_STATES = ["ok", "error"]
HEALTH = inline_serializer(
    "Health",
    {
        "status": serializers.ChoiceField(choices=CHECK_STATES),
        "database": serializers.ChoiceField(choices=CHECK_STATES),
        "broker": serializers.ChoiceField(choices=CHECK_STATES),
        "lastWorkerHeartbeat": serializers.DateTimeField(allow_null=True),
    },
)


class HealthView(APIView):
    """Liveness of the web process, the database and the broker, and the last worker heartbeat."""

    authentication_classes = []
    permission_classes = [AllowAny]

    @extend_schema(
        responses={
            200: HEALTH,
            503: OpenApiResponse(HEALTH, description="The database or the broker is down."),
        }
    )
    def get(self, request):
        database = _check_database()
        broker = _check_broker()
        beat = heartbeat_latest() if database == "ok" else None
        healthy = database == "ok" and broker == "ok"
        return Response(
            {
                "status": "ok" if healthy else "error",
                "database": database,
                "broker": broker,
                "lastWorkerHeartbeat": beat.created_at if beat else None,
            },
            status=200 if healthy else 503,
        )
