"""The preprocess step: an Apache Beam pipeline from the ingest manifest to TFRecord shards and statistics."""
