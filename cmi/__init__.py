"""cmi: the label watcher."""
