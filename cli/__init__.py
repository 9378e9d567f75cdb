"""The ``cas`` command line: parses arguments, calls the library, renders results.

Installed as ``cas.cli``; holds no store logic of its own.
"""
