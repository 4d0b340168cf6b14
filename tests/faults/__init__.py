"""The fault suite (issue 28): faults a real network makes, against
traffic's trio and anyio layers in server subprocesses.  See support.py
and docs/guarantees.rst's Faults section."""
