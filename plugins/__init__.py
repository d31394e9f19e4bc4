"""udm's built-in plugins. Each module is its own entry point in the group ``udm``; they use only
udm's public API, exactly like a third-party plugin package."""
