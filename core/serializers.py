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
