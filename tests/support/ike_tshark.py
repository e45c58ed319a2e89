"""tshark as an independent IKEv2 oracle: decrypt captured IKE messages with the keys `Ike` hands out only
when built with `log_keys_for_test=True` (test use only)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from ipsec_tunnel.ike import KeysForTest

# Wireshark 4.0 packet-isakmp.c value strings of its ikev2_decryption_table
ENCRYPTION = {
    "aes128": "AES-CBC-128 [RFC3602]",
    "aes192": "AES-CBC-192 [RFC3602]",
    "aes256": "AES-CBC-256 [RFC3602]",
    "aes128gcm16": "AES-GCM-128 with 16 octet ICV [RFC5282]",
    "aes192gcm16": "AES-GCM-192 with 16 octet ICV [RFC5282]",
    "aes256gcm16": "AES-GCM-256 with 16 octet ICV [RFC5282]",
}
INTEGRITY = {
    None: "NONE [RFC4306]",
    "sha256": "HMAC_SHA2_256_128 [RFC4868]",
    "sha384": "HMAC_SHA2_384_192 [RFC4868]",
    "sha512": "HMAC_SHA2_512_256 [RFC4868]",
}


def ikev2_record(keys: KeysForTest) -> str:
    """One `-o uat:ikev2_decryption_table:...` record (hex fields unquoted, SK_e with the GCM salt)."""
    fields = [
        f"{keys.spi_i:016x}", f"{keys.spi_r:016x}", keys.sk_ei.hex(), keys.sk_er.hex(),
        f'"{ENCRYPTION[keys.encr]}"', keys.sk_ai.hex(), keys.sk_ar.hex(), f'"{INTEGRITY[keys.integ]}"',
    ]  # fmt: skip
    return ",".join(fields)


def decode_ike(pcap: Path, keys: list[KeysForTest]) -> str:
    """tshark's verbose decode (-V) of the IKE messages in `pcap`, decrypted with `keys`."""
    args = ["tshark", "-n", "-r", str(pcap), "-Y", "isakmp", "-V"]
    for k in keys:
        args += ["-o", f"uat:ikev2_decryption_table:{ikev2_record(k)}"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"tshark failed: {proc.stderr.strip()}")
    return proc.stdout
