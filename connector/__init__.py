"""Orchestration: config, state store, pipeline, CLI."""
