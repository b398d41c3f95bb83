"""Triage: rules loaded from rules/ (policy as data), scoring with explanation, ownership."""
