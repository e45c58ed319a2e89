"""The only code that talks to the Linux kernel: TUN devices, sockets, links, routes."""
