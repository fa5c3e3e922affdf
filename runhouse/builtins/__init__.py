"""Built-in resource configs shipped with runhouse, addressed as ``^name`` (read-only)."""
