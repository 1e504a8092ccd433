"""framechain's built-in plugins, one module each."""
