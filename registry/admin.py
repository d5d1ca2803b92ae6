from django import forms
from django.contrib import admin, messages

from core.errors import DomainError
from registry import services
from registry.models import HubModel, Mapping, MappingStatus, Provider


class ProviderForm(forms.ModelForm):
    """The API key is write-only: leave it empty to keep the current one."""

    base_url = forms.URLField(max_length=500, assume_scheme="https")
    cost_url = forms.URLField(max_length=500, required=False, assume_scheme="https")
    new_api_key = forms.CharField(
        label="API key",
        required=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted and never shown again. Leave empty to keep the current key.",
    )

    class Meta:
        model = Provider
        fields = ["slug", "display_name", "organization", "base_url", "chat_route", "cost_url",
                  "request_id_header", "first_cost_query_delay_s", "state"]  # fmt: skip

    def clean(self):
        """The same rules as `provider_create` (the service), reported on the field at fault."""
        data = super().clean()
        names = ("base_url", "cost_url", "chat_route", "request_id_header",
                 "first_cost_query_delay_s")  # fmt: skip
        if all(name in data for name in names):
            try:
                data.update(services.provider_settings_clean(**{n: data[n] for n in names}))
            except DomainError as exc:
                self.add_error(exc.field if exc.field in names else None, exc.message)
        return data

    def save(self, commit=True):
        provider = super().save(commit=False)
        if self.cleaned_data.get("new_api_key"):
            provider.api_key = self.cleaned_data["new_api_key"]
        if commit:
            provider.save()
        return provider


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    form = ProviderForm
    list_display = ("slug", "display_name", "organization", "state", "base_url",
                    "has_api_key", "mapping_count")  # fmt: skip
    list_filter = ("state",)
    search_fields = ("slug", "display_name", "organization__name")
    autocomplete_fields = ["organization"]
    readonly_fields = ("created_at", "updated_at")

    @admin.display(boolean=True, description="API key")
    def has_api_key(self, obj: Provider) -> bool:
        return bool(obj.api_key)

    @admin.display(description="mappings")
    def mapping_count(self, obj: Provider) -> int:
        return obj.mappings.count()


@admin.register(HubModel)
class HubModelAdmin(admin.ModelAdmin):
    list_display = ("model_id", "pipeline_tag", "author", "modified_at")
    list_filter = ("pipeline_tag",)
    search_fields = ("model_id",)
    readonly_fields = ("hub_id", "created_at", "modified_at")
    show_full_result_count = False  # counting 50k+ rows on every page is waste


@admin.register(Mapping)
class MappingAdmin(admin.ModelAdmin):
    list_display = ("public_id", "provider", "task", "type", "target", "provider_model",
                    "status", "health", "updated_at")  # fmt: skip
    list_filter = ("provider", "task", "status", "health", "type")
    search_fields = ("hub_model__model_id", "provider_model", "public_id")
    list_select_related = ("provider", "hub_model")
    autocomplete_fields = ["provider", "hub_model"]
    # Mappings are created through the partner API (which validates them); here an admin
    # changes status and health, or deletes.
    readonly_fields = ("public_id", "provider", "task", "type", "hub_model", "tags",
                       "adapter_type", "provider_model", "created_by", "created_at",
                       "updated_at")  # fmt: skip
    actions = ["set_live", "set_staging"]
    show_full_result_count = False

    def has_add_permission(self, request):
        return False

    @admin.display(description="hub model or tags")
    def target(self, obj: Mapping) -> str:
        return obj.hub_model.model_id if obj.hub_model_id else obj.tag_key

    def _set_status(self, request, queryset, status: str) -> None:
        for mapping in queryset:
            services.mapping_set_status(mapping=mapping, status=status)
        messages.success(request, f"{queryset.count()} mapping(s) set to {status}.")

    @admin.action(description="Set selected mappings live")
    def set_live(self, request, queryset):
        self._set_status(request, queryset, MappingStatus.LIVE)

    @admin.action(description="Set selected mappings to staging")
    def set_staging(self, request, queryset):
        self._set_status(request, queryset, MappingStatus.STAGING)
