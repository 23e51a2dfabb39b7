"""Evaluation against 3D scans: the MICC Florence protocol (`micc`)."""
