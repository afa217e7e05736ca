"""A Consul-Connect-like CA for the local backend's sidecars.

Consul's built-in CA signs one leaf certificate per service whose only
identity is a SPIFFE URI SAN (``spiffe://<trust domain>/ns/<ns>/dc/<dc>/svc/<service>``);
sidecars present it on every outbound connection, check the server's SPIFFE
ID, and authorise inbound connections by it (intentions). To exercise the same
paths, and to make a mis-routed connection fail the same way (the wrong
service's certificate), the local backend issues such certificates itself:
EC P-256 keys like Consul's default, with the `cryptography` package.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import threading
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from harness.backends.local.mesh import DEFAULT_DATACENTER, TRUST_DOMAIN
from harness.backends.local.mesh.envoy import TlsFiles
from harness.contract.files import write_atomic

CA_VALIDITY = dt.timedelta(days=30)
LEAF_VALIDITY = dt.timedelta(days=3)  # Consul's default leaf TTL is 72h
CLOCK_SKEW = dt.timedelta(minutes=5)


def spiffe_id(trust_domain: str, namespace: str, datacenter: str, service: str) -> str:
    """Consul's service identity URI for the default partition."""
    return f"spiffe://{trust_domain}/ns/{namespace}/dc/{datacenter}/svc/{service}"


def _write_private(path: Path, data: bytes) -> None:
    """Write a key file readable by its owner only, atomically."""
    write_atomic(path, data, mode=0o600)


def _write(path: Path, data: bytes) -> None:
    write_atomic(path, data)


class CertAuthority:
    """A root CA in `directory` (created, or reused when it already holds one) that issues leaves.

    Thread-safe: the local backend creates pods from a thread pool.
    """

    def __init__(self, directory: Path, trust_domain: str = TRUST_DOMAIN) -> None:
        self.directory = Path(directory)
        self.trust_domain = trust_domain
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_path = self.directory / "ca.pem"
        self._ca_key_path = self.directory / "ca-key.pem"
        self._lock = threading.Lock()
        self._issued: dict[tuple[str, str, str], TlsFiles] = {}
        if self.ca_path.exists() and self._ca_key_path.exists():
            self._cert = x509.load_pem_x509_certificate(self.ca_path.read_bytes())
            key = serialization.load_pem_private_key(self._ca_key_path.read_bytes(), password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"{self._ca_key_path}: not an EC key")
            self._key = key
        else:
            self._key, self._cert = self._make_root()
            _write_private(self._ca_key_path, self._pem_key(self._key))
            _write(self.ca_path, self._cert.public_bytes(serialization.Encoding.PEM))

    @property
    def ca_pem(self) -> bytes:
        return self._cert.public_bytes(serialization.Encoding.PEM)

    @staticmethod
    def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    def _make_root(self) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Consul CA (edge-harness local backend)")])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            _builder(name, name, key.public_key(), now, CA_VALIDITY, f"spiffe://{self.trust_domain}", ca=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )
        return key, cert

    def leaf(self, service: str, namespace: str = "default", datacenter: str = DEFAULT_DATACENTER) -> TlsFiles:
        """The (cached) leaf for one service identity, written under `directory`/leaves."""
        ident = (datacenter, namespace, service)
        with self._lock:
            files = self._issued.get(ident)
            if files is not None:
                return files
            uri = spiffe_id(self.trust_domain, namespace, datacenter, service)
            key = ec.generate_private_key(ec.SECP256R1())
            now = dt.datetime.now(dt.UTC)
            subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, service)])
            cert = (
                _builder(subject, self._cert.subject, key.public_key(), now, LEAF_VALIDITY, uri, ca=False)
                .add_extension(
                    x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                    critical=False,
                )
                .add_extension(
                    x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False
                )
                .sign(self._key, hashes.SHA256())
            )
            d = self.directory / "leaves"
            d.mkdir(exist_ok=True)
            stem = f"{datacenter}.{namespace}.{service}"
            files = TlsFiles(ca=self.ca_path, cert=d / f"{stem}.pem", key=d / f"{stem}-key.pem")
            _write_private(files.key, self._pem_key(key))
            _write(files.cert, cert.public_bytes(serialization.Encoding.PEM))
            self._issued[ident] = files
            return files

    def host_leaf(self, name: str, hosts: Sequence[str], validity: dt.timedelta = LEAF_VALIDITY) -> TlsFiles:
        """A TLS server certificate for `hosts` (DNS names and IP addresses), not a service identity.

        What a Consul agent's HTTPS listener presents: consul-k8s' tls-init
        signs the servers' certificate for `server.<dc>.<domain>`, the server
        Service's names, `localhost`, 127.0.0.1 and ::1
        (control-plane/subcommand/tls-init). The fake Kubernetes cluster's
        Consul serves its HTTPS API with one; written under `directory`/hosts.
        """
        sans: list[x509.GeneralName] = []
        for host in hosts:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(host)))
            except ValueError:
                sans.append(x509.DNSName(host))
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - CLOCK_SKEW)
            .not_valid_after(now + validity)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(self._key.public_key()), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        d = self.directory / "hosts"
        d.mkdir(exist_ok=True)
        files = TlsFiles(ca=self.ca_path, cert=d / f"{name}.pem", key=d / f"{name}-key.pem")
        with self._lock:
            _write_private(files.key, self._pem_key(key))
            _write(files.cert, cert.public_bytes(serialization.Encoding.PEM))
        return files


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: dt.datetime,
    validity: dt.timedelta,
    uri: str,
    *,
    ca: bool,
) -> x509.CertificateBuilder:
    """What the CA and every leaf share: names, validity, constraints, key usage and the SPIFFE URI SAN."""
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=not ca,
                data_encipherment=False,
                key_agreement=not ca,
                key_cert_sign=ca,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(uri)]), critical=False)
    )


__all__ = ["CertAuthority", "TlsFiles", "spiffe_id"]
