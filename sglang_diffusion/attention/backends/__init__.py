"""Attention backends, one file each; ``selector.py`` picks one."""
