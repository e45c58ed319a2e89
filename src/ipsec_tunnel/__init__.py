"""ipsec-tunnel: a userspace IPsec ESP tunnel data plane for Linux (ipsecd) and its admin tool (ipsecadm)."""

__version__ = "0.10.0"
