"""Ingestion: catalogue source -> checked, labelled manifest and a report accounting for every input."""

from components.ingest.step import IngestResult, ingest_catalogue, read_manifest

__all__ = ["IngestResult", "ingest_catalogue", "read_manifest"]
