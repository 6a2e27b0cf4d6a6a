"""The local test bed: real Redis, kube-apiserver + etcd, Envoy and the lab VM.

Tests, benchmarks and `slb dev up` start the same real servers through this package,
each on free loopback ports with its state in a directory of its own. It lives in cmi
because every tier depends on cmi and none on another: any test can reach it without
bending the layering. Nothing here is imported by the product's daemons.
"""
