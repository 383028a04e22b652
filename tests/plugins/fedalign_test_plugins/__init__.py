"""Plug-ins for FedAlign's tests, outside the `fedalign` package as a user's would be.

Importable once ``tests/plugins`` is on ``sys.path`` (the ``test_plugins`` fixture of tests/conftest.py, or
``PYTHONPATH=tests/plugins`` for a node process).
"""
