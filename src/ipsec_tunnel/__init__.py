"""ipsec-tunnel: a userspace IPsec ESP tunnel data plane for Linux (ipsecd) and its admin tool (ipsecadm)."""

import os as _os

# NumPy's OpenBLAS starts a thread per CPU when it is imported and spins them at start-up; ipsec-tunnel
# does no linear algebra, so one thread is enough (unless the environment says otherwise).
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

__version__ = "0.10.0"
