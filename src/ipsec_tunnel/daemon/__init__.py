"""ipsecd: the daemon that owns the tunnel devices and moves packets."""
