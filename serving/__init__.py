"""Serving: the SavedModel export, a TF Serving-compatible model server, and its client."""
