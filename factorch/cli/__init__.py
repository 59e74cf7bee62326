"""The ``factorch`` command line: thin clients of the public API."""
