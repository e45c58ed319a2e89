"""tshark as an independent ESP oracle: decrypt and authenticate captured ESP with Wireshark's decoder."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Wireshark 4.0 packet-ipsec.c value strings for its esp_sa table.
ENCRYPTION = {
    "null": "NULL",
    "des_ede3-cbc": "TripleDES-CBC [RFC2451]",
    "aes-cbc": "AES-CBC [RFC3602]",
    "aes-ctr": "AES-CTR [RFC3686]",
    "cast5-cbc": "CAST5-CBC [RFC2144]",
    "blowfish-cbc": "BLOWFISH-CBC [RFC2451]",
    "aes-gcm/8": "AES-GCM with 8 octet ICV [RFC4106]",
    "aes-gcm/12": "AES-GCM with 12 octet ICV [RFC4106]",
    "aes-gcm/16": "AES-GCM with 16 octet ICV [RFC4106]",
}
AUTHENTICATION = {
    None: "NULL",
    "sha1": "HMAC-SHA-1-96 [RFC2404]",
    "sha256": "HMAC-SHA-256-128 [RFC4868]",
    "sha384": "HMAC-SHA-384-192 [RFC4868]",
    "sha512": "HMAC-SHA-512-256 [RFC4868]",
    "md5": "HMAC-MD5-96 [RFC2403]",
}


@dataclass(frozen=True)
class EspSa:
    """One direction's SA as Wireshark's esp_sa table wants it."""

    src: str
    dst: str
    spi: int
    cipher: str  # a key of ENCRYPTION
    cipher_key: bytes
    digest: str | None = None
    digest_key: bytes = b""

    def uat(self) -> str:
        """The record for `-o uat:esp_sa:...`."""
        proto = "IPv6" if ":" in self.src else "IPv4"
        ck = "0x" + self.cipher_key.hex() if self.cipher_key else "0x"
        dk = "0x" + self.digest_key.hex() if self.digest_key else "0x"
        fields = [proto, self.src, self.dst, f"0x{self.spi:08x}", ENCRYPTION[self.cipher], ck,
                  AUTHENTICATION[self.digest], dk]  # fmt: skip
        return ",".join(f'"{f}"' for f in fields)


def available() -> str | None:
    """None when tshark can run, else the reason."""
    return None if shutil.which("tshark") else "tshark is not installed (apt-get install tshark)"


def decode(pcap: Path, sas: list[EspSa], fields: list[str], display_filter: str = "esp") -> list[list[str]]:
    """The requested fields of every packet matching `display_filter`, decoded with the SAs."""
    args = ["tshark", "-n", "-r", str(pcap), "-o", "esp.enable_encryption_decode:TRUE",
            "-o", "esp.enable_authentication_check:TRUE", "-Y", display_filter, "-T", "fields",
            "-E", "separator=|", "-E", "occurrence=a"]  # fmt: skip
    for sa in sas:
        args += ["-o", f"uat:esp_sa:{sa.uat()}"]
    for f in fields:
        args += ["-e", f]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"tshark failed: {proc.stderr.strip()}")
    return [line.split("|") for line in proc.stdout.splitlines() if line]
