from django import forms
from django.contrib import admin, messages
from django.contrib.auth.forms import UserChangeForm
from django.core.exceptions import PermissionDenied
from django.utils.html import format_html, format_html_join

from accounts import admin as accounts_admin
from accounts.models import Organization, SettingsSource, User
from accounts.services import SPENDING_LIMIT_MAX_NANOUSD, Actor
from core.errors import DomainError
from core.money import NANOUSD_PER_USD, usd_text, usd_to_nanousd
from registry import selectors, services
from registry.models import (
    HubModel,
    Mapping,
    MappingPriceHistory,
    MappingStatus,
    PriceSync,
    Provider,
    ProviderKey,
)


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
    readonly_fields = ("last_price_sync", "created_at", "updated_at")

    @admin.display(description="Last price sync")
    def last_price_sync(self, obj: Provider) -> str:
        """When, how many models, how many mappings changed, the error or refused values."""
        sync = PriceSync.objects.filter(provider=obj).first() if obj.pk else None
        if sync is None:
            return "never"
        summary = format_html(
            "{} UTC: {} models, {} mappings updated",
            f"{sync.synced_at:%Y-%m-%d %H:%M:%S}",
            sync.entries,
            sync.updated,
        )
        if sync.error:
            summary = format_html("{}<br>error: {}", summary, sync.error)
        if sync.problems:
            items = format_html_join(
                "", "<li>{}: {}</li>", ((p.get("model"), p.get("reason")) for p in sync.problems)
            )
            summary = format_html(
                "{}<br>problems (last good value kept):<ul>{}</ul>", summary, items
            )
        return summary

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


class PriceHistoryInline(admin.TabularInline):
    """A mapping's prices over time, newest first (written by the price sync; read-only)."""

    model = MappingPriceHistory
    fields = ("valid_from", "input_price_nanousd_per_mtok", "output_price_nanousd_per_mtok",
              "context_length")  # fmt: skip
    readonly_fields = fields
    ordering = ("-valid_from", "-id")
    extra = 0
    max_num = 0
    can_delete = False
    verbose_name_plural = "price history (nano-USD per million tokens)"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Mapping)
class MappingAdmin(admin.ModelAdmin):
    inlines = [PriceHistoryInline]
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
        # The actions need the change permission (`permissions=["change"]`): Django neither
        # lists nor runs them for a view-only staff user; checked again here, defensively.
        if not self.has_change_permission(request):
            raise PermissionDenied
        for mapping in queryset:
            services.mapping_set_status(mapping=mapping, status=status)
        messages.success(request, f"{queryset.count()} mapping(s) set to {status}.")

    @admin.action(description="Set selected mappings live", permissions=["change"])
    def set_live(self, request, queryset):
        self._set_status(request, queryset, MappingStatus.LIVE)

    @admin.action(description="Set selected mappings to staging", permissions=["change"])
    def set_staging(self, request, queryset):
        self._set_status(request, queryset, MappingStatus.STAGING)


# --- users' and organizations' inference-provider settings -----------------------------------
# They name providers, so the admin pages of users and organizations get them from here: these
# classes extend accounts' and replace their registrations. Every change goes through the
# services, so it is validated like the API's and lands in the settings history with the
# admin's name.


def _admin_actor(request) -> Actor:
    return Actor(user=request.user, source=SettingsSource.ADMIN)


def _api_error_to_form_error(exc: DomainError) -> forms.ValidationError:
    return forms.ValidationError(exc.message)


class ProviderKeyInlineForm(forms.ModelForm):
    """A custom key is write-only: existing keys show masked; type a new one to replace it."""

    new_key = forms.CharField(
        label="key",
        required=False,
        strip=False,
        widget=forms.PasswordInput(render_value=False),
        help_text="Stored encrypted; only its last 4 characters are ever shown.",
    )

    class Meta:
        model = ProviderKey
        fields = ["provider"]

    def clean_new_key(self):
        key = self.cleaned_data.get("new_key") or ""
        if not key:
            if self.instance.pk is None and self.has_changed():
                raise forms.ValidationError("Type the key.")
            return ""
        try:
            return services.provider_key_clean(key, field="key")
        except DomainError as exc:
            raise _api_error_to_form_error(exc) from exc


class ProviderKeyInline(admin.TabularInline):
    model = ProviderKey
    form = ProviderKeyInlineForm
    extra = 0
    fields = ("provider", "masked", "new_key", "updated_at")
    readonly_fields = ("masked", "updated_at")
    verbose_name = "custom provider key"

    def get_readonly_fields(self, request, obj=None):
        return self.readonly_fields

    @admin.display(description="current key")
    def masked(self, obj: ProviderKey) -> str:
        return obj.masked if obj.pk else "—"


class UserAdminForm(UserChangeForm):
    def clean_provider_order(self):
        order = self.cleaned_data.get("provider_order") or []
        try:
            return services.provider_slugs_clean(order, field="provider order")
        except DomainError as exc:
            raise _api_error_to_form_error(exc) from exc


admin.site.unregister(User)


@admin.register(User)
class UserAdmin(accounts_admin.UserAdmin):
    """accounts' user admin, plus the provider order and the custom provider keys."""

    form = UserAdminForm
    inlines = [
        accounts_admin.UserMembershipInline,
        ProviderKeyInline,
        accounts_admin.SettingsChangeInline,
    ]
    fieldsets = (
        *accounts_admin.UserAdmin.fieldsets[:2],
        (
            "Inference providers",
            {
                "fields": ("provider_order",),
                "description": "Preferred providers, comma-separated, most preferred first.",
            },
        ),
        *accounts_admin.UserAdmin.fieldsets[2:],
    )

    def save_model(self, request, obj, form, change):
        new_order = list(obj.provider_order)
        obj.provider_order = list(form.initial.get("provider_order") or [])
        super().save_model(request, obj, form, change)
        if new_order != obj.provider_order:
            services.user_provider_settings_update(
                user=obj, actor=_admin_actor(request), order=new_order
            )

    def save_formset(self, request, form, formset, change):
        if formset.model is not ProviderKey:
            return super().save_formset(request, form, formset, change)
        user, actor = form.instance, _admin_actor(request)
        # Django's change message reads these; the settings history records the details.
        formset.new_objects, formset.changed_objects, formset.deleted_objects = [], [], []
        for key_form in formset.forms:
            if not key_form.has_changed() and key_form not in formset.deleted_forms:
                continue
            provider = key_form.cleaned_data.get("provider") or key_form.instance.provider
            if key_form in formset.deleted_forms:
                if key_form.instance.pk:
                    services.user_provider_key_delete(
                        user=user, provider_slug=key_form.instance.provider.slug, actor=actor
                    )
            elif key_form.cleaned_data.get("new_key"):
                if key_form.instance.pk and provider != key_form.instance.provider:
                    services.user_provider_key_delete(
                        user=user, provider_slug=key_form.instance.provider.slug, actor=actor
                    )
                services.user_provider_settings_update(
                    user=user, actor=actor, keys={provider.slug: key_form.cleaned_data["new_key"]}
                )
        return None


class OrganizationAdminForm(forms.ModelForm):
    """Spending limit in USD and disabled providers as checkboxes; saved through the service."""

    spending_limit_usd = forms.DecimalField(
        label="monthly spending limit (USD)",
        required=False,
        min_value=0,
        max_value=SPENDING_LIMIT_MAX_NANOUSD // NANOUSD_PER_USD,
        decimal_places=9,
        help_text="Pay-as-you-go spend per calendar month (UTC). Empty: no limit.",
    )
    disabled_provider_slugs = forms.MultipleChoiceField(
        label="disabled providers",
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Never chosen by the router when this organization pays.",
    )

    class Meta:
        model = Organization
        fields = ["name", "fullname", "plan", "seats"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        slugs = [p.slug for p in selectors.provider_list()]
        self.fields["disabled_provider_slugs"].choices = [(s, s) for s in slugs]
        self.initial["disabled_provider_slugs"] = list(self.instance.disabled_providers)
        limit = self.instance.spending_limit_nanousd
        if limit is not None:
            self.initial["spending_limit_usd"] = usd_text(limit)


admin.site.unregister(Organization)


@admin.register(Organization)
class OrganizationAdmin(accounts_admin.OrganizationAdmin):
    """accounts' organization admin, plus the spending limit and the disabled providers."""

    form = OrganizationAdminForm
    fieldsets = (
        *accounts_admin.OrganizationAdmin.fieldsets,
        ("Inference providers", {"fields": ("spending_limit_usd", "disabled_provider_slugs")}),
    )

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        usd = form.cleaned_data.get("spending_limit_usd")
        services.organization_provider_settings_update(
            organization=obj,
            actor=_admin_actor(request),
            spending_limit_nanousd=None if usd is None else usd_to_nanousd(usd),
            disabled_providers=form.cleaned_data.get("disabled_provider_slugs", []),
        )
