"""TLS for the local quota store when other machines reach it (`paliserve up --node-ip-address`).

The store's password crosses the network on every connection, and so do the tenants' counters:
between machines both go over TLS. `paliserve up` makes a self-signed certificate for the store's
addresses (its own trust anchor: there is no CA to ask on bare machines), keeps the key in the
store's directory (mode 0600), and publishes the certificate with the store's address through the
cluster's GCS (serve/cluster_kv.py), so that each client checks it is talking to this store, by
address, before it sends the password. Made with `cryptography` rather than by running `openssl`:
no parsing of another program's output, and the same on every machine.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

CERT_NAME, KEY_NAME = "tls.crt", "tls.key"
VALID_DAYS = 3650  # a cluster's store lives as long as the cluster; a new `up` makes a new one


@dataclass(frozen=True)
class TlsFiles:
    cert: str  # PEM; also the clients' CA file
    key: str  # PEM, mode 0600


def self_signed(directory: str, addresses: list[str]) -> TlsFiles:
    """A new key and a certificate for `addresses` (IP addresses), written into `directory`."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "paliserve quota store")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key, hashes.SHA256())
    )
    files = TlsFiles(str(Path(directory) / CERT_NAME), str(Path(directory) / KEY_NAME))
    fd = os.open(files.key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    Path(files.cert).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return files


def client_context(ca_file: str | None = None, ca_pem: str | None = None):
    """An SSL context that trusts only the store's certificate (a file, or its PEM text) and
    checks its address."""
    import ssl

    context = ssl.create_default_context(cafile=ca_file, cadata=ca_pem)
    context.check_hostname = True
    return context
