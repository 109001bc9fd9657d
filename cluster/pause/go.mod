// The pod sandbox ("pause") program for scripts/cluster's images.
module wgcluster/pause

go 1.22
