"""Sans-I/O IPsec core: bytes and `now` in; bytes, drop reasons and events out."""
