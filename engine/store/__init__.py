"""The artifact store: artifacts published whole, the home that knows every path, content identity, code versions,
the DuckDB catalog, lineage, and row tables on disk."""
