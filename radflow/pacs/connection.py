"""One way to reach a PACS over DICOMweb: its address, credentials, TLS and retries.

Ingest's DICOMweb source, `radflow route` and the review page all connect through `open_client`,
so they share one set of rules:

- the address is the DICOMweb root, `http(s)://HOST:PORT/PATH`; an address holding a user name or
  password is refused, since addresses end up in logs, manifests and pipeline specs;
- credentials come from `credentials_file`: a mounted Kubernetes Secret (a folder with the files
  `username` and `password`, the keys of a `kubernetes.io/basic-auth` Secret, or `token` for a
  bearer token) or one file of `key: value` lines with the same keys. They are never logged;
- https verifies the server against the system's CAs, or against `ca_file` (a hospital's own CA);
- each request is tried `1 + retries` times, with exponential backoff, when the PACS cannot be
  reached or answers 408, 429 or 5xx; then `PacsUnavailable` (no answer at all) or `PacsHTTPError`
  (with the last HTTP status) says what happened.

    client = open_client(PacsConfig("https://pacs.example.org/dicom-web", credentials_file="/var/secrets/pacs"))
    studies = call(lambda: client.search_for_studies(search_filters={"Modality": "CR"}), "QIDO studies", config)
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar
from urllib.parse import urlsplit

import requests

log = logging.getLogger(__name__)

T = TypeVar("T")
DICOMWEB_SCHEME = "dicomweb+"  # ingest's source form: dicomweb+http(s)://HOST:PORT/PATH?QIDO-FILTERS
AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
RETRIED_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
CREDENTIAL_KEYS = ("username", "password", "token")


class PacsUnavailable(RuntimeError):
    """The PACS gave no answer (refused, reset, timed out) on any try."""


class PacsTLSError(ValueError):
    """The PACS's https certificate is not trusted (a configuration error: never retried)."""


def _tls_reason(err: Exception) -> str:
    """The innermost reason of a requests SSLError, e.g. 'certificate verify failed: self-signed certificate'."""
    text = str(err)
    found = text.rfind("certificate verify failed")
    return text[found:].split("(")[0].rstrip(" ')\"") if found >= 0 else type(err).__name__


class PacsHTTPError(RuntimeError):
    """The PACS answered with an HTTP error status on the last try.

    Args:
        status: the HTTP status code.
        message: what was asked and what came back.
    """

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Credentials:
    """Basic or bearer credentials, or none; the secrets stay out of repr() and so out of logs."""

    username: str = ""
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)

    @property
    def kind(self) -> str:
        return "bearer" if self.token else "basic" if self.username else "none"

    def apply(self, session: requests.Session) -> None:
        """Sets the session's authentication."""
        if self.token:
            session.headers["Authorization"] = f"Bearer {self.token}"
        elif self.username:
            session.auth = (self.username, self.password)


def read_credentials(path: str) -> Credentials:
    """Reads credentials from a mounted Kubernetes Secret folder or a `key: value` file.

    Args:
        path: a folder holding `username` and `password` (or `token`) files, or a file of lines
            `username: NAME`, `password: SECRET` (or `token: TOKEN`); "" for no credentials.

    Returns:
        The credentials (none for path "").

    Raises:
        FileNotFoundError: the path does not exist or cannot be read.
        ValueError: neither a token nor a user name and password are there, or both are, or an
            unknown key; the message names the keys, never a value.
    """
    if not path:
        return Credentials()
    values: dict[str, str] = {}
    try:
        if os.path.isdir(path):
            for key in CREDENTIAL_KEYS:
                name = os.path.join(path, key)
                if os.path.isfile(name):
                    with open(name, encoding="utf-8") as f:
                        values[key] = f.read().strip()
        else:
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if not line.strip() or line.lstrip().startswith("#"):
                        continue
                    key, sep, value = line.partition(":")
                    key = key.strip()
                    if not sep or key not in CREDENTIAL_KEYS:
                        raise ValueError(f"PACS credentials file {path!r} line {number}: expected 'KEY: VALUE' with "
                                         f"KEY one of {', '.join(CREDENTIAL_KEYS)}")
                    values[key] = value.strip()
    except OSError as err:
        raise FileNotFoundError(f"PACS credentials {path!r} cannot be read: {err.strerror}") from err
    token, user, password = values.get("token", ""), values.get("username", ""), values.get("password", "")
    if token and (user or password):
        raise ValueError(f"PACS credentials {path!r} hold both a token and a username/password; keep one")
    if not token and not (user and password):
        raise ValueError(f"PACS credentials {path!r} need a token, or a username and a password "
                         f"(found: {', '.join(sorted(k for k, v in values.items() if v)) or 'nothing'})")
    return Credentials(username=user, password=password, token=token)


def check_url(url: str, field_name: str = "pacs url") -> str:
    """The DICOMweb root without a trailing slash, after checking it.

    Raises:
        ValueError: naming `field_name`, for a scheme other than http/https, no host, a user name or
            password in the address, or a query or fragment.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{field_name}: {url!r} must start with http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{field_name}: the address holds a user name or password; give credentials in a file or "
                         "a mounted Kubernetes Secret (credentials_file) instead, so they never reach a log")
    if not parts.hostname:
        raise ValueError(f"{field_name}: {url!r} has no host")
    if parts.query or parts.fragment:
        raise ValueError(f"{field_name}: {url!r} must be the DICOMweb root, without a query or fragment")
    return url.rstrip("/")


@dataclass(frozen=True)
class PacsConfig:
    """Where the PACS is and how to talk to it.

    Raises:
        ValueError: a field out of range, named.
    """

    url: str  # the DICOMweb root, http(s)://HOST:PORT/PATH, e.g. http://orthanc:8042/dicom-web
    credentials_file: str = ""  # a mounted Secret folder or a key: value file (see read_credentials); "" = none
    ca_file: str = ""  # PEM bundle of the CA that signed the PACS's https certificate; "" = the system's CAs
    timeout_s: float = 30.0  # per HTTP request
    retries: int = 3  # tries after the first, for no answer, 408, 429 and 5xx
    backoff_s: float = 0.5  # wait before the first retry; doubled before each next one

    def __post_init__(self):
        object.__setattr__(self, "url", check_url(self.url))
        if self.timeout_s <= 0:
            raise ValueError(f"pacs timeout_s must be > 0, got {self.timeout_s}")
        if self.retries < 0:
            raise ValueError(f"pacs retries must be >= 0, got {self.retries}")
        if self.backoff_s < 0:
            raise ValueError(f"pacs backoff_s must be >= 0, got {self.backoff_s}")
        if self.ca_file and not urlsplit(self.url).scheme == "https":
            raise ValueError("pacs ca_file is set but the address is not https://")

    @property
    def host(self) -> str:
        """HOST:PORT, for messages (never with credentials, which the address cannot hold)."""
        return urlsplit(self.url).netloc


class _Session(requests.Session):
    """A requests session whose own CA (`verify`) wins over $REQUESTS_CA_BUNDLE and $CURL_CA_BUNDLE.

    requests lets those variables override `Session.verify` for every request, which would make a
    configured ca_file silently unused on any machine that sets them; proxies from the environment
    still apply.
    """

    def merge_environment_settings(self, url, proxies, stream, verify, cert):
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and self.verify is not True:
            settings["verify"] = self.verify
        return settings


def open_client(config: PacsConfig):
    """A dicomweb-client DICOMwebClient for the PACS, authenticated and verifying TLS as configured.

    The library's own retries are off: `call` retries, for every kind of failure alike.

    Raises:
        FileNotFoundError, ValueError: the credentials cannot be read (see read_credentials).
    """
    from dicomweb_client.api import DICOMwebClient

    session = _Session()
    read_credentials(config.credentials_file).apply(session)
    session.verify = config.ca_file or True
    client = DICOMwebClient(config.url, session=session, timeout=config.timeout_s)
    client.set_http_retry_params(retry=False)
    return client


def call(fn: Callable[[], T], what: str, config: PacsConfig, sleep: Callable[[float], None] = time.sleep) -> T:
    """Runs one DICOMweb request, retried with backoff when the PACS is away or answers a retryable status.

    Args:
        fn: the request.
        what: what it asks for, for messages (no patient data: UIDs at most).
        config: retries, backoff, host.
        sleep: how to wait (tests pass a recorder).

    Returns:
        What `fn` returns.

    Raises:
        PacsUnavailable: no answer on any try.
        PacsTLSError: the server's certificate is not trusted (at once).
        PacsHTTPError: an HTTP error status (at once for 4xx other than 408/429; after the retries otherwise).
    """
    delay, attempt = config.backoff_s, 0
    while True:
        last = attempt == config.retries
        try:
            return fn()
        except requests.HTTPError as err:
            status = err.response.status_code if err.response is not None else 0
            if status not in RETRIED_STATUSES or last:
                tries = f" after {attempt + 1} tries" if attempt else ""
                raise PacsHTTPError(status, f"PACS {config.host} answered HTTP {status} to {what}{tries}") from err
            reason = f"HTTP {status}"
        except requests.exceptions.SSLError as err:  # an answer no retry changes: the certificate is not trusted
            raise PacsTLSError(f"PACS {config.host}: TLS verification failed ({_tls_reason(err)}); give the CA that "
                               "signed its certificate (--pacs-ca-file, ingest.dicomweb_ca_file)") from err
        except (requests.ConnectionError, requests.Timeout) as err:
            if last:
                raise PacsUnavailable(f"PACS {config.host} did not answer {what} after {attempt + 1} tries "
                                      f"({type(err).__name__}); is it running and reachable?") from err
            reason = type(err).__name__
        log.debug("PACS %s: %s for %s; retrying in %.1f s", config.host, reason, what, delay)
        sleep(delay)
        delay, attempt = delay * 2, attempt + 1


def retrieve_as_stored(client, url: str) -> list[bytes]:
    """WADO-RS of one instance (its full URL) in transfer syntax "*", as stored: the raw parts.

    Uses dicomweb-client's own GET and multipart decoding (pinned version): its public
    retrieve_instance parses the bytes into a Dataset, and writing that back could change the bytes
    that the manifest hashes and that the decoder judges (a damaged file would be re-encoded whole).
    """
    response = client._http_get(url, headers={"Accept": AS_STORED})
    if response.headers.get("Content-Type", "").startswith("application/dicom"):  # a bare part, as some PACS send
        return [response.content]
    return [bytes(part) for part in client._decode_multipart_message(response, stream=False)]
