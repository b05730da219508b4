"""Tiny Live Avatar training recipe: procedural talking-face data (see generate.py)."""
