"""Locust load tests (see README "Load tests")."""
