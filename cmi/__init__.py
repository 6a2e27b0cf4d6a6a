"""cmi: the control centre.

It owns the desired-state model and the Redis store; every tier reads them.
"""
