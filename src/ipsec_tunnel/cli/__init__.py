"""ipsecadm: the command-line administration tool."""
