"""Tests of the sans-I/O ESP core (`ipsec_tunnel.core`)."""
