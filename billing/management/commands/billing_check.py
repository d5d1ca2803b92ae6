from django.core.management.base import BaseCommand
from django.db import DEFAULT_DB_ALIAS

from billing.selectors import INVARIANTS, invariant_violations


class Command(BaseCommand):
    help = (
        "Verify the ledger's invariants: every transaction sums to zero, every cached balance "
        "equals the sum of its entries, no included/prepaid pool is negative, every billed "
        "usage record has exactly one charge of its cost and no charge is shared or orphaned, "
        "a charge's legs touch only its payer's pools and its provider's payable, a refund is "
        "its charge negated, and every leg on a payer's pool is in that payer's transaction. "
        "Exits 1 naming each violation."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--database",
            default=DEFAULT_DB_ALIAS,
            help="the database alias to check (default: %(default)s)",
        )

    def handle(self, *args, **options):
        violations = invariant_violations(using=options["database"])
        for name, object_id, detail in violations:
            self.stderr.write(f"VIOLATION {name}: id {object_id} ({detail})")
        if violations:
            self.stderr.write(f"{len(violations)} violation(s).")
            raise SystemExit(1)
        self.stdout.write(f"OK: {len(INVARIANTS)} invariants hold.")
