from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.contrib.auth.forms import UserChangeForm

from accounts import services
from accounts.models import (
    AccessToken,
    Membership,
    Organization,
    ProviderKey,
    SettingsChange,
    SettingsSource,
    TokenRole,
    User,
)
from accounts.permissions import FINE_GRAINED_PERMISSIONS
from core.errors import DomainError
from core.money import NANOUSD_PER_USD, format_usd, usd_text, usd_to_nanousd
from registry import selectors as registry_selectors


def _admin_actor(request) -> services.Actor:
    return services.Actor(user=request.user, source=SettingsSource.ADMIN)


def _api_error_to_form_error(exc: DomainError) -> forms.ValidationError:
    return forms.ValidationError(exc.message)


# --- inference-provider settings -------------------------------------------------------------
class SettingsChangeInline(admin.TabularInline):
    """The audit trail of a user's or organization's provider settings: read-only."""

    model = SettingsChange
    fk_name = "user"
    extra = 0
    can_delete = False
    fields = ("created_at", "setting", "target", "old_value", "new_value", "actor_name", "source")
    readonly_fields = fields
    verbose_name_plural = "inference provider settings history"

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


class OrganizationSettingsChangeInline(SettingsChangeInline):
    fk_name = "organization"


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


class MembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["user"]


class UserMembershipInline(admin.TabularInline):
    model = Membership
    extra = 0
    autocomplete_fields = ["organization"]
    verbose_name = "organization membership"


@admin.register(User)
class UserAdmin(DjangoUserAdmin):
    """Provider order and custom keys change through the services, so every change is
    validated like the API's and lands in the settings history with the admin's name."""

    form = UserAdminForm
    list_display = ("username", "email", "plan", "is_staff", "is_active", "date_joined")
    list_filter = ("plan", "is_staff", "is_active")
    search_fields = ("username", "email", "fullname")
    readonly_fields = ("hub_id", "last_login", "date_joined")
    inlines = [UserMembershipInline, ProviderKeyInline, SettingsChangeInline]
    fieldsets = (
        (None, {"fields": ("username", "password", "hub_id")}),
        ("Profile", {"fields": ("fullname", "email", "plan")}),
        (
            "Inference providers",
            {
                "fields": ("provider_order",),
                "description": "Preferred providers, comma-separated, most preferred first.",
            },
        ),
        (
            "Permissions",
            {"fields": ("is_active", "is_staff", "is_superuser", "groups", "user_permissions")},
        ),
        ("Dates", {"fields": ("last_login", "date_joined")}),
    )
    add_fieldsets = (
        (None, {"classes": ("wide",), "fields": ("username", "plan", "password1", "password2")}),
    )

    def get_inlines(self, request, obj):
        return self.inlines if obj is not None else [UserMembershipInline]

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
        max_value=services.SPENDING_LIMIT_MAX_NANOUSD // NANOUSD_PER_USD,
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
        slugs = [p.slug for p in registry_selectors.provider_list()]
        self.fields["disabled_provider_slugs"].choices = [(s, s) for s in slugs]
        self.initial["disabled_provider_slugs"] = list(self.instance.disabled_providers)
        limit = self.instance.spending_limit_nanousd
        if limit is not None:
            self.initial["spending_limit_usd"] = usd_text(limit)


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    form = OrganizationAdminForm
    list_display = ("name", "plan", "seats", "spending_limit", "member_count", "created_at")
    list_filter = ("plan",)
    search_fields = ("name", "fullname")
    readonly_fields = ("hub_id", "created_at")
    fieldsets = (
        (None, {"fields": ("name", "fullname", "hub_id", "created_at")}),
        ("Plan", {"fields": ("plan", "seats")}),
        ("Inference providers", {"fields": ("spending_limit_usd", "disabled_provider_slugs")}),
    )
    inlines = [MembershipInline, OrganizationSettingsChangeInline]

    def save_model(self, request, obj, form, change):
        super().save_model(request, obj, form, change)
        usd = form.cleaned_data.get("spending_limit_usd")
        services.organization_provider_settings_update(
            organization=obj,
            actor=_admin_actor(request),
            spending_limit_nanousd=None if usd is None else usd_to_nanousd(usd),
            disabled_providers=form.cleaned_data.get("disabled_provider_slugs", []),
        )

    @admin.display(description="spending limit")
    def spending_limit(self, obj: Organization) -> str:
        if obj.spending_limit_nanousd is None:
            return "none"
        return format_usd(obj.spending_limit_nanousd)

    @admin.display(description="members")
    def member_count(self, obj: Organization) -> int:
        return obj.memberships.count()


@admin.register(Membership)
class MembershipAdmin(admin.ModelAdmin):
    list_display = ("organization", "user", "role", "created_at")
    list_filter = ("role",)
    search_fields = ("organization__name", "user__username")
    autocomplete_fields = ["organization", "user"]


class AccessTokenAddForm(forms.ModelForm):
    permissions = forms.MultipleChoiceField(
        choices=sorted(FINE_GRAINED_PERMISSIONS.items()),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="Only for fine-grained tokens.",
    )

    class Meta:
        model = AccessToken
        fields = ["user", "name", "role", "permissions"]

    def clean(self):
        data = super().clean()
        if data.get("role") != TokenRole.FINE_GRAINED and data.get("permissions"):
            self.add_error("permissions", "Only fine-grained tokens carry permissions.")
        return data


@admin.register(AccessToken)
class AccessTokenAdmin(admin.ModelAdmin):
    """Tokens are created through the service; the secret is shown once, in a message."""

    list_display = ("name", "user", "role", "token_prefix", "created_at", "last_used_at", "state")
    list_filter = ("role", ("revoked_at", admin.EmptyFieldListFilter))
    search_fields = ("name", "user__username", "token_prefix")
    autocomplete_fields = ["user"]
    actions = ["revoke"]
    readonly_fields = (
        "user",
        "name",
        "role",
        "permissions",
        "token_prefix",
        "token_hash",
        "created_at",
        "last_used_at",
        "revoked_at",
    )

    def get_form(self, request, obj=None, **kwargs):
        if obj is None:
            kwargs["form"] = AccessTokenAddForm
        return super().get_form(request, obj, **kwargs)

    def get_readonly_fields(self, request, obj=None):
        return () if obj is None else self.readonly_fields

    def has_change_permission(self, request, obj=None):
        # Viewable, never editable: a token's rights change by revoking and creating anew.
        return False if obj is not None else super().has_change_permission(request, obj)

    @admin.display(description="state")
    def state(self, obj: AccessToken) -> str:
        return "active" if obj.is_active else "revoked"

    def save_model(self, request, obj, form, change):
        if change:
            return
        try:
            token, secret = services.access_token_create(
                user=form.cleaned_data["user"],
                name=form.cleaned_data["name"],
                role=form.cleaned_data["role"],
                permissions=form.cleaned_data.get("permissions") or [],
            )
        except DomainError as exc:
            messages.error(request, exc.message)
            return
        obj.pk, obj.token_prefix, obj.created_at = token.pk, token.token_prefix, token.created_at
        messages.warning(
            request,
            f"Token created: {secret} — copy it now, it will not be shown again.",
        )

    @admin.action(description="Revoke selected tokens")
    def revoke(self, request, queryset):
        active = list(queryset.filter(revoked_at__isnull=True))
        for token in active:
            services.access_token_revoke(token=token)
        self.message_user(request, f"Revoked {len(active)} token(s).")


@admin.register(SettingsChange)
class SettingsChangeAdmin(admin.ModelAdmin):
    """Every change of a provider order, custom key (masked), spending limit or disabled
    providers: who, when, from where, before and after. Read-only."""

    list_display = ("created_at", "subject", "setting", "target", "old_value", "new_value",
                    "actor_name", "source")  # fmt: skip
    list_filter = ("setting", "source")
    search_fields = ("user__username", "organization__name", "actor_name", "target")
    date_hierarchy = "created_at"
    list_select_related = ("user", "organization")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False

    @admin.display(description="user or organization")
    def subject(self, obj: SettingsChange) -> str:
        return str(obj.user or obj.organization)
