"""Slow, obviously correct NumPy references for every detops op.

``reference.<module>`` mirrors ``detops.<module>`` name for name. NumPy only: importing
this package never imports torch (a test checks). float64 inside; loops welcome.
"""
