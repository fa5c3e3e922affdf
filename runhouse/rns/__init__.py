"""The Resource Name System: addresses, and the stores that hold resource configs by name."""
