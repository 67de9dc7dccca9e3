"""Delivery: the outbox of dispatch rows, the C-STORE SCU, the retry policy and dead letters."""
