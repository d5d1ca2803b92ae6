from django.urls import path

from accounts import api

urlpatterns = [
    path("whoami-v2", api.WhoAmIView.as_view(), name="whoami"),
    path("settings/tokens", api.AccessTokenListView.as_view(), name="token-list"),
    path(
        "settings/tokens/<int:token_id>", api.AccessTokenDetailView.as_view(), name="token-detail"
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
]
