"""Pieces of the curses control client (``framechain tui``): views, forms, menu actions, the app."""
