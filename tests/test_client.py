"""Client layer: error mapping, settings, request bodies; integration through the local server."""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

import botocore.exceptions as bce
import pytest

from glacierfs.client import (
    ConnectionSettings,
    FileSlice,
    JobNotFoundError,
    NoInventoryError,
    make_glacier,
    redact,
    translate_error,
    validate_vault_name,
)
from glacierfs.errors import (
    ConflictError,
    CredentialsError,
    IntegrityError,
    NotFoundError,
    NotReadyError,
    ServiceError,
    UsageError,
)
from glacierfs.treehash import MiB, tree_hash

SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
ACCESS = "AKIAIOSFODNN7EXAMPLE"


def client_error(code: str, message: str, status: int = 400, retries: int = 0, op: str = "DescribeVault"):
    return bce.ClientError(
        {
            "Error": {"Code": code, "Message": message},
            "ResponseMetadata": {"HTTPStatusCode": status, "RetryAttempts": retries},
        },
        op,
    )


# --------------------------------------------------------------------------- translate_error


@pytest.mark.parametrize("exc", [bce.NoCredentialsError(), bce.PartialCredentialsError(provider="env", cred_var="x")])
def test_missing_credentials_is_one_clear_line(exc):
    err = translate_error(exc, "vault 'v'")
    assert isinstance(err, CredentialsError)
    assert err.exit_code != 0
    assert "no AWS credentials found" in str(err) and "--profile" in str(err)
    assert "\n" not in str(err)


def test_vault_not_found_keeps_service_message_with_context():
    msg = "Vault not found for ARN: arn:aws:glacier:us-east-1:012345678901:vaults/photos"
    err = translate_error(client_error("ResourceNotFoundException", msg, 404), "vault 'photos'")
    assert isinstance(err, NotFoundError)
    assert str(err) == f"vault 'photos': {msg}"
    assert err.code == "ResourceNotFoundException"


def test_service_closed_to_new_customers():
    err = translate_error(client_error("NoLongerSupportedException", "API no longer supported"))
    assert isinstance(err, ServiceError)
    assert "closed to new customers since 2025-12-15" in str(err)


def test_throttling_reports_retries():
    err = translate_error(client_error("ThrottlingException", "Rate exceeded", 400, retries=4), "listing vaults")
    assert isinstance(err, ServiceError)
    assert str(err) == "listing vaults: throttled by Glacier; retried 4 times"


@pytest.mark.parametrize(
    ("code", "message", "status", "cls"),
    [
        ("InvalidParameterValueException", "Checksum mismatch: expected aa, computed bb", 400, IntegrityError),
        ("InvalidParameterValueException", "Invalid x-amz-sha256-tree-hash: aa", 400, IntegrityError),
        ("InvalidParameterValueException", "Invalid part size: 3. Part size must ...", 400, UsageError),
        ("InvalidParameterValueException", "Vault not empty or recently written to: arn", 400, ConflictError),
        ("InvalidParameterValueException", "The job is not currently available for download: j", 400, NotReadyError),
        ("InvalidSignatureException", "The value passed in as x-amz-content-sha256 does not match the computed payload hash.", 403, IntegrityError),
        ("InvalidSignatureException", "The request signature we calculated does not match", 403, CredentialsError),
        ("UnrecognizedClientException", "The security token included in the request is invalid.", 400, CredentialsError),
        ("AccessDeniedException", "denied", 403, CredentialsError),
        ("ExpiredTokenException", "expired", 403, CredentialsError),
        ("ServiceUnavailableException", "try later", 500, ServiceError),
        ("InternalError", "boom", 503, ServiceError),
        ("LimitExceededException", "too many vaults", 400, ConflictError),
        ("ResourceNotFoundException", "Inventory retrieval jobs for vault arn cannot be initiated yet, as Amazon Glacier has not yet generated an initial inventory for this vault.", 404, NoInventoryError),
        ("ResourceNotFoundException", "The job ID was not found: abc", 404, JobNotFoundError),
        ("ResourceNotFoundException", "Vault not found for ARN: arn", 404, NotFoundError),
    ],
)
def test_client_error_classes(code, message, status, cls):
    err = translate_error(client_error(code, message, status), "ctx")
    assert type(err) is cls, (type(err), str(err))
    assert str(err).startswith("ctx") or cls is ServiceError
    assert "\n" not in str(err)


def test_5xx_mentions_retries():
    err = translate_error(client_error("ServiceUnavailableException", "down", 500, retries=2), "vault 'v'")
    assert isinstance(err, ServiceError)
    assert "retried 2 times" in str(err)


@pytest.mark.parametrize(
    "exc",
    [
        bce.EndpointConnectionError(endpoint_url="http://127.0.0.1:9/"),
        bce.ConnectionClosedError(endpoint_url="http://127.0.0.1:9/"),
        bce.ReadTimeoutError(endpoint_url="http://127.0.0.1:9/"),
        bce.ConnectTimeoutError(endpoint_url="http://127.0.0.1:9/"),
    ],
)
def test_connection_errors_name_the_endpoint(exc):
    err = translate_error(exc, "vault 'v'", endpoint="http://127.0.0.1:9")
    assert isinstance(err, ServiceError)
    assert "cannot reach http://127.0.0.1:9" in str(err)


def test_profile_not_found():
    err = translate_error(bce.ProfileNotFound(profile="nope"))
    assert isinstance(err, CredentialsError) and "'nope'" in str(err)


def test_glacierfs_error_wrapped_by_botocore_is_unwrapped():
    inner = IntegrityError("file shrank")
    assert translate_error(bce.HTTPClientError(error=inner)) is inner


def test_secrets_never_appear_in_messages():
    text = (
        f"Authorization: AWS4-HMAC-SHA256 Credential={ACCESS}/20250101/us-east-1/glacier/aws4_request, "
        f"SignedHeaders=host, Signature=0123456789abcdef0123 secret {SECRET}"
    )
    err = translate_error(client_error("AccessDeniedException", text, 403), "ctx", secrets=[SECRET, ACCESS])
    assert SECRET not in str(err) and ACCESS not in str(err)
    assert "0123456789abcdef0123" not in str(err)
    assert ACCESS not in redact(f"key {ACCESS} used")


def test_settings_repr_hides_credentials():
    s = ConnectionSettings(access_key=ACCESS, secret_key=SECRET)
    assert SECRET not in repr(s) and ACCESS not in repr(s)


@pytest.mark.parametrize("name", ["a", "photos-2024_v1.0", "x" * 255])
def test_valid_vault_names(name):
    assert validate_vault_name(name) == name


@pytest.mark.parametrize("name", ["", "x" * 256, "bad name", "a/b", "é", "semi;colon"])
def test_invalid_vault_names(name):
    with pytest.raises(UsageError, match="invalid vault name"):
        validate_vault_name(name)


# --------------------------------------------------------------------------- settings, real botocore


@pytest.fixture
def clean_aws_env(monkeypatch, tmp_path):
    """An AWS environment with nothing in the credential chain (no IMDS either)."""
    for var in list(os.environ):
        if var.startswith("AWS_"):
            monkeypatch.delenv(var)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return tmp_path


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def test_region_defaults_to_us_east_1(clean_aws_env):
    g = make_glacier(ConnectionSettings(access_key="a", secret_key="b"))
    assert g.region == "us-east-1"
    assert g.endpoint_id == "aws"


def test_region_from_profile(clean_aws_env):
    (clean_aws_env / "config").write_text("[profile arch]\nregion = eu-west-1\n")
    (clean_aws_env / "credentials").write_text("[arch]\naws_access_key_id = a\naws_secret_access_key = b\n")
    g = make_glacier(ConnectionSettings(profile="arch"))
    assert g.region == "eu-west-1"
    assert make_glacier(ConnectionSettings(profile="arch", region="ap-south-1")).region == "ap-south-1"


def test_unknown_profile(clean_aws_env):
    with pytest.raises(CredentialsError, match="profile 'ghost' not found"):
        make_glacier(ConnectionSettings(profile="ghost"))


def test_half_given_keys_are_refused(clean_aws_env):
    with pytest.raises(CredentialsError):
        make_glacier(ConnectionSettings(access_key="a"))


def test_no_credentials_through_botocore(clean_aws_env):
    g = make_glacier(ConnectionSettings(endpoint_url=closed_port_url(), max_attempts=1))
    with pytest.raises(CredentialsError, match="no AWS credentials found"):
        g.list_vaults()


def test_unreachable_endpoint(clean_aws_env):
    url = closed_port_url()
    g = make_glacier(
        ConnectionSettings(endpoint_url=url, access_key=ACCESS, secret_key=SECRET, max_attempts=1, connect_timeout=2)
    )
    with pytest.raises(ServiceError, match=f"cannot reach {url}") as info:
        g.describe_vault("v")
    assert SECRET not in str(info.value)


def test_bad_vault_name_fails_before_any_call(clean_aws_env):
    g = make_glacier(ConnectionSettings(endpoint_url=closed_port_url(), max_attempts=1))
    with pytest.raises(UsageError):
        g.describe_vault("no spaces allowed")


# --------------------------------------------------------------------------- FileSlice


def test_file_slice_reads_its_range_and_rewinds(tmp_path: Path):
    data = os.urandom(3 * 1000)
    path = tmp_path / "f"
    path.write_bytes(data)
    with FileSlice(path, 1000, 1000, content_sha256="x") as body:
        assert len(body) == 1000 and body.tell() == 0
        assert body.read(10) == data[1000:1010]
        assert len(body) == 990
        assert body.read() == data[1010:2000]
        assert body.read() == b""
        assert body.seek(0) == 0
        assert body.read(-1) == data[1000:2000]
        assert body.seek(0, os.SEEK_END) == 1000
        body.seek(-5, os.SEEK_CUR)
        assert body.read() == data[1995:2000]
        buf = bytearray(4)
        body.seek(0)
        assert body.readinto(buf) == 4 and bytes(buf) == data[1000:1004]


def test_file_slice_detects_a_shrunk_file(tmp_path: Path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    body = FileSlice(path, 50, 50)
    os.truncate(path, 60)
    assert body.read(10) == b"x" * 10
    with pytest.raises(IntegrityError, match="shrank"):
        body.read()
    body.close()


# --------------------------------------------------------------------------- through the real server




@pytest.fixture
def glacier(request, clean_aws_env):
    server = request.getfixturevalue("glacier_server")
    return make_glacier(
        ConnectionSettings(endpoint_url=server.url, access_key=ACCESS, secret_key=SECRET, max_attempts=2)
    )


def test_vault_lifecycle_and_pagination(glacier):
    names = [f"v{i:02d}" for i in range(23)]  # more than two pages of ListVaults (limit 10)
    for name in names:
        glacier.create_vault(name)
    listed = [v["VaultName"] for v in glacier.list_vaults()]
    assert listed == sorted(names)
    desc = glacier.describe_vault("v00")
    assert desc["VaultName"] == "v00"
    glacier.delete_vault("v22")
    with pytest.raises(NotFoundError, match="vault 'v22'"):
        glacier.describe_vault("v22")


def test_upload_archive_streams_a_file_slice_once(glacier, tmp_path):
    glacier.create_vault("arch")
    data = os.urandom(2 * MiB + 123)
    path = tmp_path / "f"
    path.write_bytes(data)
    reads: list[int] = []

    class Counting(FileSlice):
        def read(self, size=-1):
            chunk = super().read(size)
            reads.append(len(chunk))
            return chunk

    body = Counting(path, 0, len(data), content_sha256=hashlib.sha256(data).hexdigest())
    archive_id, _ = glacier.upload_archive("arch", body, tree_hash(data), "desc")
    body.close()
    assert archive_id
    assert sum(reads) == len(data)  # botocore did not read the body to hash it


def test_wrong_tree_hash_is_an_integrity_error(glacier):
    glacier.create_vault("arch")
    with pytest.raises(IntegrityError):
        glacier.upload_archive("arch", b"hello", tree_hash(b"other"), "d")


def test_multipart_listing_and_abort(glacier, tmp_path):
    glacier.create_vault("mp")
    upload_id = glacier.initiate_multipart("mp", MiB, "d")
    data = os.urandom(MiB)
    server_hash = glacier.upload_part(
        "mp", upload_id, data, 0, MiB - 1, tree_hash(data), content_sha256=hashlib.sha256(data).hexdigest()
    )
    assert server_hash == tree_hash(data)
    parts = glacier.list_parts("mp", upload_id)
    assert parts["PartSizeInBytes"] == MiB
    assert [p["RangeInBytes"] for p in parts["Parts"]] == [f"0-{MiB - 1}"]
    assert upload_id in [u["MultipartUploadId"] for u in glacier.list_uploads("mp")]
    glacier.abort_multipart("mp", upload_id)
    assert upload_id not in [u["MultipartUploadId"] for u in glacier.list_uploads("mp")]


@pytest.mark.parametrize("as_file", [False, True])
def test_precomputed_sha256_is_what_is_sent(glacier, tmp_path, as_file):
    """The SHA-256 we pass is sent as is (botocore does not recompute it): a wrong one is refused."""
    glacier.create_vault("sha")
    data = os.urandom(MiB)
    upload_id = glacier.initiate_multipart("sha", MiB, "d")
    path = tmp_path / "f"
    path.write_bytes(data)
    body = FileSlice(path, 0, MiB) if as_file else data
    with pytest.raises(IntegrityError, match="SHA-256"):
        glacier.upload_part("sha", upload_id, body, 0, MiB - 1, tree_hash(data), content_sha256="0" * 64)
    body = FileSlice(path, 0, MiB) if as_file else data
    good = hashlib.sha256(data).hexdigest()
    assert glacier.upload_part("sha", upload_id, body, 0, MiB - 1, tree_hash(data), content_sha256=good) == tree_hash(data)
    archive_id, _ = glacier.complete_multipart("sha", upload_id, MiB, tree_hash(data))
    assert glacier.complete_multipart("sha", upload_id, MiB, tree_hash(data))[0] == archive_id  # idempotent


def test_job_output_cut_half_way_is_a_service_error(glacier_server_factory, clean_aws_env):
    server = glacier_server_factory("--faults", "reset=1.0", "--faults-ops", "GetJobOutput", "--seed", "1")
    glacier = make_glacier(
        ConnectionSettings(endpoint_url=server.url, access_key=ACCESS, secret_key=SECRET, max_attempts=1)
    )
    glacier.create_vault("out")
    data = os.urandom(3 * MiB)
    archive_id, _ = glacier.upload_archive("out", data, tree_hash(data), "d")
    job_id = glacier.initiate_retrieval("out", archive_id, "Standard", (0, 2 * MiB - 1))
    server.complete_jobs(job_id)
    desc = glacier.describe_job("out", job_id)
    assert desc["Completed"] and desc.get("RetrievalByteRange") == f"0-{2 * MiB - 1}"
    assert any(j["JobId"] == job_id for j in glacier.list_jobs("out", completed=True))
    # urllib3 reports the reset ("Connection broken") or botocore the short body ("N read, but
    # total bytes expected is M"), depending on where the reset lands
    with pytest.raises(
        ServiceError, match=r"transfer from .* interrupted: (Connection broken|\d+ read, but total bytes expected)"
    ) as info:
        stream, headers = glacier.get_job_output("out", job_id)
        assert int(headers["content-length"]) == 2 * MiB
        with stream:
            while stream.read(64 * 1024):
                pass
    assert SECRET not in str(info.value)


def test_every_listing_follows_every_page(glacier):
    glacier.create_vault("pages")
    data = b"x" * 10
    upload_ids = {glacier.initiate_multipart("pages", MiB, f"u{i}") for i in range(5)}
    assert {u["MultipartUploadId"] for u in glacier.list_uploads("pages", page_size=2)} == upload_ids
    upload_id = sorted(upload_ids)[0]
    for i in range(5):
        part = os.urandom(MiB) if i < 4 else data
        glacier.upload_part("pages", upload_id, part, i * MiB, i * MiB + len(part) - 1, tree_hash(part))
    listing = glacier.list_parts("pages", upload_id, page_size=2)
    assert [p["RangeInBytes"].split("-")[0] for p in listing["Parts"]] == [str(i * MiB) for i in range(5)]
    assert "Marker" not in listing
    archive_id, _ = glacier.upload_archive("pages", data, tree_hash(data), "a")
    jobs = {glacier.initiate_retrieval("pages", archive_id) for _ in range(3)}
    assert {j["JobId"] for j in glacier.list_jobs("pages", page_size=2)} == jobs
    assert [v["VaultName"] for v in glacier.list_vaults(page_size=1)] == ["pages"]


def test_signed_requests_with_precomputed_hashes_verify(glacier_server_factory, clean_aws_env, tmp_path):
    """Against a server that checks SigV4: our single-read bodies sign correctly; bad keys are refused."""
    server = glacier_server_factory("--verify-sigv4", "--access-key", ACCESS, "--secret-key", SECRET)
    good = make_glacier(ConnectionSettings(endpoint_url=server.url, access_key=ACCESS, secret_key=SECRET))
    good.create_vault("signed")
    data = os.urandom(MiB + 17)
    path = tmp_path / "f"
    path.write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    assert good.upload_archive("signed", data, tree_hash(data), "bytes", content_sha256=sha)[0]
    with FileSlice(path, 0, len(data)) as body:
        assert good.upload_archive("signed", body, tree_hash(data), "file", content_sha256=sha)[0]

    wrong = "x" + SECRET[1:]
    bad = make_glacier(
        ConnectionSettings(endpoint_url=server.url, access_key=ACCESS, secret_key=wrong, max_attempts=1)
    )
    with pytest.raises(CredentialsError) as info:
        bad.list_vaults()
    assert wrong not in str(info.value) and SECRET not in str(info.value)


# --------------------------------------------------------------------------- validation of server answers

from glacierfs import client as gclient  # noqa: E402


@pytest.mark.parametrize(
    "value",
    ["a/b", "../x", "id\x1b[31m", "", "x" * 1025, "sp ace", "nul\x00", None, 42, "ünï"],
)
def test_ids_the_service_cannot_have_are_refused(value):
    with pytest.raises(ServiceError, match="the server returned an invalid archive id") as exc:
        gclient.checked_id(value, "archive id", "ctx")
    assert "\x1b" not in str(exc.value) and "\x00" not in str(exc.value)


@pytest.mark.parametrize("value", ["-" + "a" * 137, "A" * 92, "abc_DEF-123", "ZmFrZQ=="])
def test_real_ids_are_accepted(value):
    assert gclient.checked_id(value, "archive id") == value


@pytest.mark.parametrize("value", [-1, float("nan"), float("inf"), 1.5, "12a", True, 1 << 63, "-3"])
def test_bad_sizes_are_refused(value):
    with pytest.raises(ServiceError, match="invalid size"):
        gclient.checked_count(value, "size", "ctx")


def test_good_sizes_dates_hashes():
    assert gclient.checked_count("17", "size") == 17
    assert gclient.checked_count(None, "size") is None
    assert gclient.checked_date("2012-03-20T17:03:43.221Z", "date") == "2012-03-20T17:03:43.221Z"
    assert gclient.checked_hash("AB" * 32) == "ab" * 32
    for bad in ("yesterday", "2012-13-45T00:00:00Z", "", 5):
        with pytest.raises(ServiceError, match="invalid date"):
            gclient.checked_date(bad, "date")
    for bad in ("a" * 63, "g" * 64, "a" * 65):
        with pytest.raises(ServiceError, match="invalid tree hash"):
            gclient.checked_hash(bad)


class _Pager:
    """A boto3-like client whose list_vaults pages are given in advance (the pagination rules only)."""

    def __init__(self, pages):
        self.pages = pages
        self.calls = 0

        class Meta:
            endpoint_url = "http://127.0.0.1:9"

            class events:
                @staticmethod
                def register_first(*a, **k):
                    pass

        self.meta = Meta

    def list_vaults(self, **params):
        page = self.pages(self.calls, params.get("marker"))
        self.calls += 1
        return page


def _vault(name):
    return {"VaultName": name, "VaultARN": f"arn:aws:glacier:us-east-1:0:vaults/{name}"}


@pytest.mark.parametrize(
    ("pages", "message"),
    [
        (lambda n, m: {"VaultList": [_vault("a")], "Marker": f"m{n}"}, "nothing new"),
        (lambda n, m: {"VaultList": [_vault(f"v{n}")], "Marker": "same"}, "same page marker twice"),
        (lambda n, m: {"VaultList": [_vault(f"v{n}-{i}") for i in range(5000)], "Marker": f"m{n}"}, "more than"),
        (lambda n, m: {"VaultList": [_vault("a")], "Marker": "\x1b[2J"}, "invalid page marker"),
    ],
    ids=["no-progress", "repeated", "endless-new-items", "escape-marker"],
)
def test_listings_end_on_hostile_markers(pages, message):
    fake = _Pager(pages)
    g = gclient.Glacier(fake, ConnectionSettings(), "us-east-1")
    with pytest.raises(ServiceError, match=message):
        g.list_vaults()
    assert fake.calls < 30


def test_a_short_page_with_a_marker_is_followed():
    pages = [{"VaultList": [_vault("a")], "Marker": "m1"}, {"VaultList": [], "Marker": "m2"},
             {"VaultList": [_vault("b")], "Marker": None}]
    g = gclient.Glacier(_Pager(lambda n, m: pages[n]), ConnectionSettings(), "us-east-1")
    assert [v["VaultName"] for v in g.list_vaults()] == ["a", "b"]
