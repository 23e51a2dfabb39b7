"""Mesh and file I/O."""
