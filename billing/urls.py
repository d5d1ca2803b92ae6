from django.urls import path

from billing import api

urlpatterns = [
    path("accounts/<str:name>", api.BillingAccountView.as_view(), name="billing-account"),
    path("accounts/<str:name>/ledger", api.LedgerView.as_view(), name="billing-ledger"),
    path("usage", api.UsageListView.as_view(), name="billing-usage"),
]
