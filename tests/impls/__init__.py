"""Implementations of the seed's functions fed to ``detops verify`` by tests/test_verify_cli.py:
``correct.py`` passes; every ``wrong_*.py`` holds one deliberate mistake and must FAIL with
the matching hint or reason."""
