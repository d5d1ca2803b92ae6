"""Response shapes of the registry's API for the OpenAPI schema (documentation only: the views
build these bodies in `registry.selectors` and `registry.api`)."""

from rest_framework import serializers

from registry.models import MappingHealth, MappingStatus, MappingType

ENTRY_STATUSES = [*MappingStatus.values, "error"]  # "error": the provider cannot serve it now


class ProviderMappingEntrySerializer(serializers.Serializer):
    """One provider of a hub model, as `expand=inferenceProviderMapping` shows it."""

    status = serializers.ChoiceField(choices=ENTRY_STATUSES)
    providerId = serializers.CharField()
    task = serializers.CharField()
    type = serializers.CharField(required=False, help_text="`tag-filter` for those mappings.")
    adapter = serializers.CharField(required=False, help_text="Tag-filter (LoRA) mappings.")
    adapterWeightsPath = serializers.CharField(
        required=False, allow_blank=True, help_text="Tag-filter (LoRA) mappings."
    )


class ProviderMappingListEntrySerializer(ProviderMappingEntrySerializer):
    """The same in the model list, where the mapping is a list in selection order."""

    provider = serializers.CharField()
    hfModelId = serializers.CharField()


class HubModelSerializer(serializers.Serializer):
    """A hub model. Without `expand`, every field but `inference` and the mapping; with it,
    `_id`, `id` and the expanded fields only (as the Hub)."""

    _id = serializers.CharField()
    id = serializers.CharField()
    modelId = serializers.CharField(required=False)
    author = serializers.CharField(required=False, allow_blank=True)
    pipeline_tag = serializers.CharField(required=False)
    tags = serializers.ListField(child=serializers.CharField(), required=False)
    createdAt = serializers.DateTimeField(required=False)
    lastModified = serializers.DateTimeField(required=False)
    private = serializers.BooleanField(required=False)
    gated = serializers.BooleanField(required=False)
    disabled = serializers.BooleanField(required=False)
    inference = serializers.ChoiceField(
        choices=["warm"], required=False, help_text="Present when a live provider serves it."
    )


class HubModelDetailSerializer(HubModelSerializer):
    inferenceProviderMapping = serializers.DictField(
        child=ProviderMappingEntrySerializer(),
        required=False,
        help_text="Provider name to entry, in selection order.",
    )


class HubModelListItemSerializer(HubModelSerializer):
    inferenceProviderMapping = ProviderMappingListEntrySerializer(many=True, required=False)


PARTNER_MAPPING_LIST_SCHEMA = {
    "type": "object",
    "description": "Task to (hub model id, or `tag-filter=<sorted tags>`) to mapping.",
    "additionalProperties": {
        "type": "object",
        "additionalProperties": {
            "type": "object",
            "properties": {
                "_id": {"type": "string"},
                "providerId": {"type": "string"},
                "status": {"type": "string", "enum": MappingStatus.values},
                "adapterType": {"type": "string", "description": "Tag-filter mappings."},
                "tags": {
                    "type": "array",
                    "items": {"type": "string"},
                    "description": "Tag-filter mappings.",
                },
            },
            "required": ["_id", "providerId", "status"],
        },
    },
}


class MappingItemSerializer(serializers.Serializer):
    """What a create or status change returns."""

    _id = serializers.CharField()
    type = serializers.ChoiceField(choices=MappingType.values)
    task = serializers.CharField()
    hfModel = serializers.CharField(required=False, help_text="Single-model mappings.")
    tags = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="Tag-filter mappings."
    )
    adapterType = serializers.CharField(required=False, help_text="Tag-filter mappings.")
    providerModel = serializers.CharField()
    providerId = serializers.CharField()
    status = serializers.ChoiceField(choices=MappingStatus.values)
    health = serializers.ChoiceField(choices=MappingHealth.values)
