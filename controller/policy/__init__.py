"""Pure decision logic: gates, keep rule, budgets, the loop's outcome policies, the harm test and
the constitution in force. Values in, values out; no processes, git or DuckDB."""
