"""Converter: turn trained models into validated, signed bundles per hardware profile."""
