"""Operators that submit vendor jobs and bring their results home."""
