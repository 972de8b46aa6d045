"""A server certificate for 127.0.0.1 from a throwaway CA no system trusts (trustme), as files."""

from __future__ import annotations

from pathlib import Path

import trustme


def loopback_certificate(folder: Path) -> tuple[Path, Path, Path]:
    """Write the server's certificate chain, its key and the CA's certificate into ``folder``;
    returns ``(cert_file, key_file, ca_file)``."""
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    cert_file, key_file, ca_file = folder / "cert.pem", folder / "key.pem", folder / "ca.pem"
    cert.private_key_and_cert_chain_pem.write_to_path(str(cert_file))
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    return cert_file, key_file, ca_file
