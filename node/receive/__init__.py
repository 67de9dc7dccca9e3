"""Receiving: the pynetdicom AE (C-ECHO, C-STORE), reading received headers, holding studies
whose images are still in flight, and the ingest records in the database."""
