"""Serializer base classes shared by every app's API."""

from rest_framework import serializers


class StrictSerializer(serializers.Serializer):
    """A serializer that refuses what it does not understand.

    A typo in a field name ("staus") must not be silently dropped: it is a 400 naming the
    field. A JSON body that is not an object is a 400 too.
    """

    def to_internal_value(self, data):
        if not isinstance(data, dict):
            raise serializers.ValidationError(
                {"non_field_errors": ["Expected a JSON object."]}, code="invalid"
            )
        known = {name for name, f in self.fields.items() if not f.read_only}
        unknown = sorted(set(data) - known)
        if unknown:
            raise serializers.ValidationError(
                {name: ["Unknown field."] for name in unknown}, code="unknown_field"
            )
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """A CharField that refuses numbers and booleans instead of turning them into text (a
    key or a name given as `12345` is a mistake in the client, not a string)."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictDecimalField(serializers.DecimalField):
    """A DecimalField where a blank string is invalid, not null: with `allow_null`, DRF reads
    `""` as null, which would silently clear a value such as a spending limit."""

    def validate_empty_values(self, data):
        if isinstance(data, str) and not data.strip():
            self.fail("invalid")
        return super().validate_empty_values(data)
