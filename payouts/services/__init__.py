"""Payouts services, one module per room: ledger, earnings, transfers (and reversals), accounts,
stripe_events, floor, sweeper; errors holds what they raise. Import the room you need."""
