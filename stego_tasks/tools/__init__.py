"""Commands on a finished run: predict, sweep-k, seeds, and the report's pieces."""
