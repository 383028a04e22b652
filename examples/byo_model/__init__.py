"""Bring your own model: a plug-in architecture for FedAlign (docs/byo-model.md walks through it)."""
