"""The `--variant NAME=SRC[:OPT,OPT]` words of bench/counts, bench/profile and bench/idle."""

from pathlib import Path

import pytest

from bench.counts import variant_spec


def test_name_absolute_src_and_options(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    assert variant_spec("nocap=src:--batch=4096,--spin-us=0") == (
        "nocap",
        str(tmp_path / "src"),
        ["--batch=4096", "--spin-us=0"],
    )


def test_without_options() -> None:
    assert variant_spec("base=/x/old/src") == ("base", "/x/old/src", [])
    assert variant_spec("base=/x/old/src:") == ("base", "/x/old/src", [])


def test_counts_measures_raw_esp_with_esp(tmp_path: Path) -> None:
    """bench/counts --esp: the variant's pair runs AES-GCM over raw ESP, and its capture check looks for
    ESP, not UDP port 4500; without it, ESP-in-UDP (constructing a variant starts nothing)."""
    from bench.counts import Variant

    raw = Variant("cn0", tmp_path, "/x/src", [], esp=True)
    udp = Variant("cn1", tmp_path, "/x/src", [])
    assert (raw.config.cipher, raw.config.udp, raw.encap_filter) == ("gcm", False, "ip proto 50")
    assert (udp.config.cipher, udp.config.udp, udp.encap_filter) == ("gcm", True, "udp port 4500")
