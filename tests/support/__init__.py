"""Test support: real fixtures and helpers the test modules share (never shipped in the product)."""
