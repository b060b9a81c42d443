"""Visualisation: pose overlays, report pages and plots."""
