"""Shared by every layer: the catalog, errors, timing, settings, the Serve layout, and Ray (ray_compat)."""
