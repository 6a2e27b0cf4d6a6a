"""Every Redis layout openslb keeps, one module each, and the one way to connect."""
