"""Completing: when a study has fully arrived (the pure rule and its orchestration), whether it
is an eligible MURA study and of which type, and the APScheduler wiring that asks."""
