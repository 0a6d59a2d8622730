"""Federated sequential recommendation: client updates, server aggregation and local privacy."""
