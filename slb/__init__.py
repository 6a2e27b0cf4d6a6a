"""slb: the ground floor every part of openslb stands on.

Plain data and pure rules (the model, selectors, snapshots, resolution, certificates),
every tier's settings, operator writes, the pipeline's Celery app, every Redis layout
(`slb.storage`) and the root of the `slb` command. It imports no wing: the watcher
(`cmi`), the tiers (`l4`, `l7`) and the console (`web`) import it, never each other.
"""
