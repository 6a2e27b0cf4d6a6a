"""The L4 tier: every VIP:port is an IPVS virtual service, programmed on each LB node."""
