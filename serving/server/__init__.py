"""A model server that speaks TensorFlow Serving's public API: gRPC, REST, models.config, batching."""
