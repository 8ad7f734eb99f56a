"""Acquisition: the protocol library (``protocols``); scanners, bookings, the registry and the worklist follow.

Issue 18 of the tracker. Everything here is pseudonymous: identities live only in the participant registry.
"""
