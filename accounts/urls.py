from django.urls import path

from accounts import api

urlpatterns = [
    path("whoami-v2", api.WhoAmIView.as_view(), name="whoami"),
    path("settings/tokens", api.AccessTokenListView.as_view(), name="token-list"),
    path(
        "settings/tokens/<int:token_id>", api.AccessTokenDetailView.as_view(), name="token-detail"
    ),
    path(
        "settings/inference-providers",
        api.UserProviderSettingsView.as_view(),
        name="inference-provider-settings",
    ),
    path(
        "settings/inference-providers/keys/<str:provider>",
        api.UserProviderKeyView.as_view(),
        name="inference-provider-key",
    ),
    path("organizations", api.OrganizationListView.as_view(), name="organization-list"),
    path(
        "organizations/<str:name>", api.OrganizationDetailView.as_view(), name="organization-detail"
    ),
    path(
        "organizations/<str:name>/members",
        api.OrganizationMemberListView.as_view(),
        name="organization-members",
    ),
    path(
        "organizations/<str:name>/settings/inference-providers",
        api.OrganizationProviderSettingsView.as_view(),
        name="organization-inference-provider-settings",
    ),
]
