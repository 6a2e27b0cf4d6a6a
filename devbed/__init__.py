"""devbed: the local platform and test bed.

Real Redis, kube-apiserver + etcd, Envoy and the lab VM (real kernel IPVS), started by
tests, benchmarks and `slb dev up` alike, each on free loopback ports with its state in
a directory of its own; and the rigs built on them that tests and benchmarks share (the
l7 harness, the lab's LB pair, the e2e scenarios). It stands above every wing and
nothing in the product imports it (import-linter keeps both true).
"""
