"""The request/response protocol between ipsecd and ipsecadm."""
