"""One module per resource type, all on one Resource base."""
