"""Preprocessing (microscopy front end to come)."""
