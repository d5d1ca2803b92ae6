from django.core.management.base import BaseCommand, CommandError
from django.db.models import Exists, OuterRef

from billing import polling
from billing.models import UsageRecord, UsageState
from core.money import format_usd
from registry.models import Provider


class Command(BaseCommand):
    help = (
        "Poll providers' cost endpoints and charge what they answer (one synchronous cycle). "
        "The beat schedule does this every minute; this is for operators and tests."
    )

    def add_arguments(self, parser):
        parser.add_argument("--provider", help="only this provider slug")
        parser.add_argument(
            "--once",
            action="store_true",
            required=True,
            help="run one cycle and exit (the only mode)",
        )
        parser.add_argument("--batch-size", type=int, default=polling.BATCH_SIZE_MAX)

    def handle(self, *args, provider, batch_size, **options):
        # As the beat task: every provider with pending records, whatever its state.
        pending = UsageRecord.objects.filter(provider=OuterRef("pk"), state=UsageState.PENDING)
        providers = Provider.objects.filter(Exists(pending))
        if provider:
            providers = Provider.objects.filter(slug=provider)
            if not providers.exists():
                raise CommandError(f"--provider: no provider {provider!r}")
        failed = False
        for p in providers.order_by("slug"):

            def progress(batch, result, slug=p.slug):
                self.stderr.write(
                    f"  {slug}: batch {batch}: asked {result.asked}, billed {result.billed}, "
                    f"zero-cost {result.zero_cost}, invalid {result.invalid}"
                )

            result = polling.cost_poll_provider(
                provider=p, batch_size=batch_size, progress=progress
            )
            if result.skipped:
                self.stdout.write(f"{p.slug}: skipped ({result.skipped})")
                continue
            line = (
                f"{p.slug}: {result.batches} batch(es), asked {result.asked}, billed "
                f"{result.billed} ({format_usd(result.charged_nanousd)}), zero-cost "
                f"{result.zero_cost}, held {result.held}, invalid {result.invalid}, unknown "
                f"{result.unknown}, failed-to-bill {result.failed_to_bill}"
            )
            if result.error:
                failed = True
                line += f"; ERROR: {result.error}"
            self.stdout.write(line)
        if failed:
            raise SystemExit(1)
