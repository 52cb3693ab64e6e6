"""Top floor: receivers, decode, pipeline, config, settling, query surface, gate and CLI."""
