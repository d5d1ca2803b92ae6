from django.core.management.base import BaseCommand

from billing.selectors import INVARIANTS, invariant_violations


class Command(BaseCommand):
    help = (
        "Verify the ledger's invariants: every transaction sums to zero, every cached balance "
        "equals the sum of its entries, no included/prepaid pool is negative, every billed "
        "usage record has exactly one charge of its cost and no charge is shared or orphaned. "
        "Exits 1 naming each violation."
    )

    def handle(self, *args, **options):
        violations = invariant_violations()
        for name, object_id, detail in violations:
            self.stderr.write(f"VIOLATION {name}: id {object_id} ({detail})")
        if violations:
            self.stderr.write(f"{len(violations)} violation(s).")
            raise SystemExit(1)
        self.stdout.write(f"OK: {len(INVARIANTS)} invariants hold.")
