"""Pure bytes <-> records for every file cas writes; no I/O lives here.

Byte tables for each record are in ``docs/format.md``; the two must change together, with the
format version.
"""
