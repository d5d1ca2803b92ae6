"""Usage records, the ledger and balances (see the billing issue)."""
