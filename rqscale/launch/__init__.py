"""Ray wiring: the only package that imports ray."""
