"""Bottom floor: the span batch schema, DuckDB schema and migrations, the group-commit writer, queries."""
