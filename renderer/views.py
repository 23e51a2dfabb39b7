"""View names and their order in every ``(B, V, ...)`` tensor."""
VIEWS = ("front", "left", "right")
