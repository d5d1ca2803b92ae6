from django import forms
from django.contrib import admin, messages
from django.contrib.auth.admin import UserAdmin as DjangoUserAdmin
from django.core.exceptions import PermissionDenied
from django.http import HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import reverse

from accounts import services
from accounts.models import (
    AccessToken,
    Membership,
    Organization,
    SettingsChange,
    TokenRole,
    User,
)
from accounts.permissions import FINE_GRAINED_PERMISSIONS
from core.errors import DomainError
from core.money import format_usd


# --- settings history ------------------------------------------------------------------------
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
    """Users. The inference-provider settings (provider order, custom keys), which name
    providers, are added by `registry.admin.UserAdmin`, which replaces this registration."""

    list_display = ("username", "email", "plan", "is_staff", "is_active", "date_joined")
    list_filter = ("plan", "is_staff", "is_active")
    search_fields = ("username", "email", "fullname")
    readonly_fields = ("hub_id", "last_login", "date_joined")
    inlines = [UserMembershipInline, SettingsChangeInline]
    fieldsets = (
        (None, {"fields": ("username", "password", "hub_id")}),
        ("Profile", {"fields": ("fullname", "email", "plan")}),
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


@admin.register(Organization)
class OrganizationAdmin(admin.ModelAdmin):
    """Organizations. The spending limit and disabled providers are edited through
    `registry.admin.OrganizationAdmin`, which replaces this registration."""

    list_display = ("name", "plan", "seats", "spending_limit", "member_count", "created_at")
    list_filter = ("plan",)
    search_fields = ("name", "fullname")
    readonly_fields = ("hub_id", "created_at")
    fieldsets = (
        (None, {"fields": ("name", "fullname", "hub_id", "created_at")}),
        ("Plan", {"fields": ("plan", "seats")}),
    )
    inlines = [MembershipInline, OrganizationSettingsChangeInline]

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
    """Tokens are created through the service; the secret is shown once, on the page that
    answers the POST."""

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
        obj.new_secret = secret  # for response_add only; never stored, never in a message

    def response_add(self, request, obj, post_url_continue=None):
        """The secret is shown once, on the page answering the POST (not stored): a message
        would carry it in the messages cookie, which is signed but not encrypted."""
        secret = getattr(obj, "new_secret", None)
        if secret is None:  # the service refused (its message is queued): back to the list
            return HttpResponseRedirect(reverse("admin:accounts_accesstoken_changelist"))
        context = {
            **self.admin_site.each_context(request),
            "opts": self.opts,
            "title": "Access token created",
            "token": obj,
            "secret": secret,
        }
        response = TemplateResponse(request, "admin/accounts/accesstoken/created.html", context)
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke(self, request, queryset):
        # Needs the change permission: Django neither lists nor runs the action for a
        # view-only staff user; checked again here, defensively.
        if not self.has_change_permission(request):
            raise PermissionDenied
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
