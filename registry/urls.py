from django.urls import path

from registry import api, settings_api

urlpatterns = [
    path("partners/<str:provider>/models", api.PartnerModelsView.as_view(),
         name="partner-models"),
    # Deprecated form; before `<mapping_id>` so "status" is not taken for an id.
    path("partners/<str:provider>/models/status", api.LegacyPartnerModelStatusView.as_view(),
         name="partner-models-status-legacy"),
    path("partners/<str:provider>/models/<str:mapping_id>",
         api.PartnerModelDetailView.as_view(), name="partner-model"),
    path("partners/<str:provider>/models/<str:mapping_id>/status",
         api.PartnerModelStatusView.as_view(), name="partner-model-status"),
    path("models", api.HubModelListView.as_view(), name="hub-models"),
    path("models/<str:namespace>/<str:name>", api.HubModelDetailView.as_view(),
         name="hub-model"),
    # Users' and organizations' inference-provider settings (they name providers).
    path("settings/inference-providers", settings_api.UserProviderSettingsView.as_view(),
         name="inference-provider-settings"),
    path("settings/inference-providers/keys/<str:provider>",
         settings_api.UserProviderKeyView.as_view(), name="inference-provider-key"),
    path("organizations/<str:name>/settings/inference-providers",
         settings_api.OrganizationProviderSettingsView.as_view(),
         name="organization-inference-provider-settings"),
]  # fmt: skip
