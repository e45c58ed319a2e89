"""The C extensions: the core's per-packet framing (`ipsec_tunnel.core._framing`) and the ESP-in-UDP
socket's per-datagram calls (`ipsec_tunnel.linux._pktio`); everything else is in pyproject.toml. Built
by `pip install` (`make venv`, `make install`) with gcc and the Python headers (Debian: gcc,
python3-dev); where they are missing the install goes on without them and the pure-Python path runs."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ipsec_tunnel.core._framing",
            ["src/ipsec_tunnel/core/_framing.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,  # without a compiler the install goes on, on the pure-Python path
        ),
        Extension(
            "ipsec_tunnel.linux._pktio",
            ["src/ipsec_tunnel/linux/_pktio.c"],
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
            optional=True,
        ),
    ]
)
