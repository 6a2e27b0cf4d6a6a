"""The L7 tier: an xDS control plane that drives a fleet of Envoy proxies."""
