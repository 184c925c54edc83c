"""Meshes, logical-axis rules and shardings: the only place that knows about devices."""
