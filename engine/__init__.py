"""tuneline's engine: the work of every pipeline stage, as plain Python. Never imports dagster."""
