"""Customer features, segment presets and the rule language, all vectorised with polars."""
