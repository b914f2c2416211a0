"""A package for the allowlist bypass tests (tests/test_security.py): its modules import what real task modules do."""
