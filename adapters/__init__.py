"""Adapters for outside systems (CRM sources now; ad cabinets later)."""
