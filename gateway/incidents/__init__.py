"""Incidents: detection from live traffic, escalation, notification, evidence preservation."""
