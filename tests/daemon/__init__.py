"""Tests of ipsecd's wiring (`ipsec_tunnel.daemon`) that need no root."""
