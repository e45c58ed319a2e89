"""Tests of the kernel-facing code: TUN devices, links and routes, ESP/UDP transports, namespaces."""
