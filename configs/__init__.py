"""Preset rule configurations shipped with lrp-cli (YAML files)."""
