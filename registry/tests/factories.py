import factory

from accounts.models import OrgPlan
from accounts.tests.factories import OrganizationFactory
from registry.models import HubModel, Mapping, MappingStatus, MappingType, Provider


class ProviderFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Provider
        django_get_or_create = ("slug",)

    slug = factory.Sequence(lambda n: f"provider-{n}")
    organization = factory.SubFactory(
        OrganizationFactory,
        name=factory.LazyAttribute(lambda o: f"{o.factory_parent.slug}-org"),
        plan=OrgPlan.ENTERPRISE,
    )
    base_url = factory.LazyAttribute(lambda p: f"http://127.0.0.1:9/{p.slug}")
    cost_url = factory.LazyAttribute(lambda p: f"http://127.0.0.1:9/{p.slug}/costs")
    api_key = "sk-test"


class HubModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = HubModel
        django_get_or_create = ("model_id",)

    model_id = factory.Sequence(lambda n: f"org-{n}/model-{n}")
    author = factory.LazyAttribute(lambda m: m.model_id.split("/")[0])
    pipeline_tag = "text-generation"
    tags = factory.LazyFunction(lambda: ["transformers", "conversational"])


class MappingFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Mapping

    provider = factory.SubFactory(ProviderFactory)
    hub_model = factory.SubFactory(HubModelFactory)
    task = "conversational"
    type = MappingType.SINGLE_MODEL
    provider_model = factory.LazyAttribute(lambda m: f"{m.hub_model.model_id}-turbo")
    status = MappingStatus.LIVE


class TagFilterMappingFactory(MappingFactory):
    hub_model = None
    type = MappingType.TAG_FILTER
    task = "text-to-image"
    tags = factory.LazyFunction(
        lambda: sorted(["lora", "base_model:adapter:black-forest-labs/FLUX.1-dev"])
    )
    adapter_type = "lora"
    provider_model = "flux-lora"
