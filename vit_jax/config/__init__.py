"""Configs of a run: checks of what the user typed, values derived from the others, config-file loading."""
