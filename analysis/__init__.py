"""Pure dataflow analysis: placeholders, the session DAG, objectives, prefixes."""
