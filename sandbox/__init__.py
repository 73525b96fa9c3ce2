"""Local emulators and synthetic data for tests, benchmarks and the demo. Never used against a live system."""
