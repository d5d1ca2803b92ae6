from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from core.api import HealthView
from core.errors import api_not_found
from router import views as router_views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/health", HealthView.as_view(), name="health"),
    path("api/schema", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api/", include("accounts.urls")),
    path("api/", include("registry.urls")),
    path("api/billing/", include("billing.urls")),
    path("v1/models", router_views.model_list, name="router-models"),
    path("v1/models/<path:model_id>", router_views.model_detail, name="router-model"),
    # Last: any other API path is a JSON 404, in DEBUG too (Django's debug page is HTML): in
    # OpenAI's shape under /v1/ (the router's clients parse it), in the Hub's under /api/.
    re_path(r"^v1/", router_views.unknown_path),
    re_path(r"^api/", api_not_found),
]

handler400 = "core.errors.handler400"
handler403 = "core.errors.handler403"
handler404 = "core.errors.handler404"
handler500 = "core.errors.handler500"
