module openslb.local/testimages

go 1.22
