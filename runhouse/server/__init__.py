"""The cluster daemon: HTTP API, named objects, env worker processes."""
