"""Implementations of the course's functions fed to ``detops verify`` by
tests/test_verify_cli.py: the ``correct*.py`` never FAIL, ``course.py`` (the course's
provided functions) DEPARTS, and every ``wrong_*.py`` holds one deliberate mistake, described
in its docstring, and FAILs with the matching hint or reason (DEPARTS where the mistake shows
only outside the shared contract)."""
