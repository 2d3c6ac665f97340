"""Text environments behind one async ``Env`` protocol, a pool and a registry."""
