"""Remote shards through fsspec against real servers on 127.0.0.1, with injected faults.

An HTTP file server (werkzeug, with Range support) and moto's S3 in server
mode run in this process; DataLoader workers reach them over TCP. The servers
inject transient faults (503s, connections dropped mid-body) and permanent
ones (404, 403). The tests check that every record arrives exactly once and,
from the server's request log, that a failed range was asked for again from
the same byte offset -- the read resumed where the stream stopped instead of
starting the shard over.
"""

from __future__ import annotations

import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from torch.utils.data import DataLoader

import torchseq as ts
from tests.conftest import anchor_index
from tests.support.badinput import gzip_bytes, jsonl_bytes, tar_bytes_io, tar_sample
from tests.support.servers import Faults, Seen, s3_bucket, serve_files
from torchseq.errors import ConfigError, RemoteAccessError, RemoteError, ShardNotFoundError
from torchseq.sources.remote import RetryPolicy, classify

FAST = RetryPolicy(initial_delay=0.001, max_delay=0.01, request_bytes=256)  # ~10 ranges a shard
RECORDS_PER_SHARD = 300


def jsonl_shards(count: int = 4) -> dict[str, bytes]:
    return {
        f"/data/train-{k:05d}.jsonl.gz": gzip_bytes(
            jsonl_bytes(range(k * RECORDS_PER_SHARD, (k + 1) * RECORDS_PER_SHARD))
        )
        for k in range(count)
    }


def tar_shards(count: int = 2, per_shard: int = 60) -> dict[str, bytes]:
    return {
        f"/data/train-{k:05d}.tar": tar_bytes_io([tar_sample(i) for i in range(k * per_shard, (k + 1) * per_shard)])
        for k in range(count)
    }


def flaky(method: str, path: str, start: int | None, number: int) -> str:
    """Per object: its first HEAD fails, GET #2 fails with 503, GETs #4 and #6 are cut mid-body."""
    if method == "HEAD":
        return "status:503" if number == 1 else "ok"
    return {2: "status:503", 4: "drop", 6: "drop"}.get(number, "ok")


def delivered(pipe: ts.Pipeline, num_workers: int, out: list[int] | None = None) -> list[int]:
    """Anchor indexes in delivery order (appended to ``out`` as they come, when given)."""
    iterator = iter(DataLoader(pipe, batch_size=None, num_workers=num_workers))
    out = [] if out is None else out
    try:
        for record in iterator:
            out.append(anchor_index(record["anchor"]))
    except Exception as exc:
        exc.__traceback__ = None  # let the loader's workers stop now (see test_errors.run)
        del iterator
        raise
    return out


def _data_gets(log: list[Seen], sizes: dict[str, int]) -> dict[str, list[Seen]]:
    gets: dict[str, list[Seen]] = defaultdict(list)
    for seen in log:
        # A GET without Range is fsspec's size lookup after a failed HEAD, not a data read.
        if seen.method == "GET" and seen.path in sizes and seen.start is not None:
            gets[seen.path].append(seen)
    return gets


def assert_resumed_in_place(log: list[Seen], sizes: dict[str, int], request_bytes: int) -> None:
    """Each object was read once, range after range; a failed range was asked again at the same byte."""
    for path, requests in _data_gets(log, sizes).items():
        ok_starts = [s.start for s in requests if s.action == "ok"]
        assert ok_starts == list(range(0, sizes[path], request_bytes)), path
        for failed, following in zip(requests, requests[1:], strict=False):
            if failed.action != "ok":
                assert following.start == failed.start, (path, failed, following)


def assert_every_failure_retried(log: list[Seen], sizes: dict[str, int], request_bytes: int) -> None:
    """Weaker, for readers that overlap (balanced shares may split a shard, and counting
    reads shards too): every range is aligned, and each failed range was later read."""
    for path, requests in _data_gets(log, sizes).items():
        assert all(s.start % request_bytes == 0 for s in requests), path
        ok = {s.start for s in requests if s.action == "ok"}
        assert ok == set(range(0, sizes[path], request_bytes)), path
        assert {s.start for s in requests if s.action != "ok"} <= ok, path


@pytest.fixture(autouse=True)
def index_cache(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Record-count indexes of remote shards go to a cache dir: a temporary one here."""
    monkeypatch.setenv("TORCHSEQ_CACHE_DIR", str(tmp_path_factory.mktemp("index-cache")))


# ------------------------------------------------------------------ HTTP
@pytest.fixture
def http_jsonl() -> Iterator[tuple[str, Faults, dict[str, bytes]]]:
    files = jsonl_shards()
    faults = Faults(flaky)
    with serve_files(files, faults) as url:
        yield url, faults, files


@pytest.mark.parametrize("num_workers, balance", [(0, "partial"), (2, "off"), (2, "partial")])
def test_http_transient_faults_are_retried_and_resumed_exactly_once(
    http_jsonl: tuple[str, Faults, dict[str, bytes]], num_workers: int, balance: str
) -> None:
    url, faults, files = http_jsonl
    pipe = ts.read_jsonl(url + "/data/train-{00000..00003}.jsonl.gz", retry=FAST).balance(balance)
    got = delivered(pipe, num_workers)
    assert Counter(got) == Counter(range(4 * RECORDS_PER_SHARD))
    for path in files:
        actions = Counter(s.action for s in faults.log if s.path == path)
        assert actions["status:503"] == 2 and actions["drop"] == 2, (path, actions)
    sizes = {p: len(b) for p, b in files.items()}
    if num_workers == 2 and balance == "partial":
        # Balanced: the record counts are read first, and a shard may be split between workers.
        assert_every_failure_retried(faults.log, sizes, FAST.request_bytes)
    else:
        assert_resumed_in_place(faults.log, sizes, FAST.request_bytes)
    assert pipe.stats().records == 4 * RECORDS_PER_SHARD
    assert pipe.stats().skipped == {}


def test_http_webdataset_shards_resume_exactly_once() -> None:
    files = tar_shards()
    faults = Faults(flaky)
    retry = RetryPolicy(initial_delay=0.001, request_bytes=8192)
    with serve_files(files, faults) as url:
        got = delivered(ts.read_webdataset([url + p for p in files], retry=retry).balance("off"), 2)
    assert Counter(got) == Counter(range(120))
    assert len(faults.seen("drop")) == 2 * len(files)
    assert_resumed_in_place(faults.log, {p: len(b) for p, b in files.items()}, retry.request_bytes)


def test_http_missing_shard_is_permanent(http_jsonl: tuple[str, Faults, dict[str, bytes]]) -> None:
    url, faults, _ = http_jsonl
    spec = [url + "/data/train-00000.jsonl.gz", url + "/data/gone.jsonl.gz"]
    with pytest.raises(ShardNotFoundError) as info:
        delivered(ts.read_jsonl(spec, retry=FAST), 0)
    message = str(info.value)
    assert message.startswith(f"{url}/data/gone.jsonl.gz: shard not found")
    assert "check the URL" in message
    gone = [(s.method, s.action) for s in faults.log if s.path == "/data/gone.jsonl.gz"]
    # fsspec's size lookup: HEAD (503 injected), then a plain GET that gets the 404; not retried.
    assert gone == [("HEAD", "status:503"), ("GET", "ok")]

    pipe = ts.read_jsonl(spec, on_error="skip", retry=FAST)
    assert sorted(delivered(pipe, 0)) == list(range(RECORDS_PER_SHARD))
    assert pipe.stats().skipped == {"missing shard": 1}


def test_http_forbidden_is_an_access_error() -> None:
    faults = Faults(lambda method, path, start, number: "status:403")
    with serve_files(jsonl_shards(1), faults) as url:
        with pytest.raises(RemoteAccessError) as info:
            delivered(ts.read_jsonl(url + "/data/train-00000.jsonl.gz", retry=FAST), 0)
    assert str(info.value).startswith(f"{url}/data/train-00000.jsonl.gz: access denied")
    assert "storage_options" in str(info.value)
    assert len(faults.log) <= 2  # HEAD, then fsspec's GET fallback: never retried


def test_http_retries_are_bounded_with_growing_backoff() -> None:
    def rule(method: str, path: str, start: int | None, number: int) -> str:
        return "status:503" if method == "GET" and start == 1024 else "ok"

    faults = Faults(rule)
    delays: list[float] = []
    retry = RetryPolicy(attempts=4, initial_delay=0.01, multiplier=3.0, max_delay=0.05, jitter=0.0,
                        request_bytes=1024, sleep=delays.append)
    with serve_files(jsonl_shards(1), faults) as url:
        shard = url + "/data/train-00000.jsonl.gz"
        with pytest.raises(RemoteError) as info:
            delivered(ts.read_jsonl(shard, retry=retry), 0)
    message = str(info.value)
    assert message.startswith(f"{shard}: reading bytes 1024-2047 failed 4 times")
    assert "503" in message and "RetryPolicy(attempts=" in message
    assert len([s for s in faults.log if s.start == 1024]) == 4
    assert delays == pytest.approx([0.01, 0.03, 0.05])  # grows by 3x, capped at max_delay


def test_server_without_range_support_is_read_whole() -> None:
    files = jsonl_shards(2)
    faults = Faults()
    with serve_files(files, faults, ranges=False) as url:
        got = delivered(ts.read_jsonl([url + p for p in files], retry=FAST), 0)
    assert sorted(got) == list(range(2 * RECORDS_PER_SHARD))
    assert len([s for s in faults.log if s.method == "GET"]) == 2  # one answer per object


def test_remote_glob_and_brace_specs_expand_in_order(http_jsonl: tuple[str, Faults, dict[str, bytes]]) -> None:
    url, _, _ = http_jsonl
    pipe = ts.read_jsonl([url + "/data/train-0000{2,0}.jsonl.gz"], retry=FAST)
    got = delivered(pipe, 0)
    assert got == list(range(600, 900)) + list(range(0, 300))


# ------------------------------------------------------------------ S3 (moto server)
BUCKET = "pairs"


@pytest.fixture
def s3() -> Iterator[tuple[str, Faults, dict[str, Any]]]:

    def rule(method: str, path: str, start: int | None, number: int) -> str:
        return rules[0](method, path, start, number)

    rules = [lambda method, path, start, number: "ok"]
    faults = Faults(rule)
    objects = {path.removeprefix("/data/"): data for path, data in {**jsonl_shards(), **tar_shards()}.items()}
    with s3_bucket(BUCKET, faults, objects=objects) as (options, _):
        faults.log.clear()
        yield options["endpoint_url"], faults, {"options": options, "rules": rules}


@pytest.mark.parametrize("num_workers", [0, 2])
def test_s3_faults_are_survived_exactly_once(s3: tuple[str, Faults, dict[str, Any]], num_workers: int) -> None:
    _, faults, ctx = s3
    ctx["rules"][0] = flaky
    pipe = ts.read_jsonl(f"s3://{BUCKET}/train-*.jsonl.gz", storage_options=ctx["options"], retry=FAST)
    assert Counter(delivered(pipe, num_workers)) == Counter(range(4 * RECORDS_PER_SHARD))
    assert len(faults.seen("drop")) == 8 and len(faults.seen("status:503", "GET")) == 4
    sizes = {f"/{BUCKET}/{p.removeprefix('/data/')}": len(b) for p, b in jsonl_shards().items()}
    if num_workers == 2:  # balanced by default: counted first, shards may be split
        assert_every_failure_retried(faults.log, sizes, FAST.request_bytes)
    else:
        assert_resumed_in_place(faults.log, sizes, FAST.request_bytes)


def test_s3_drops_in_a_row_are_resumed_at_the_same_range(s3: tuple[str, Faults, dict[str, Any]]) -> None:
    """Five drops in a row at one range: torchseq's retry (the only one reading S3 bodies) resumes there."""
    _, faults, ctx = s3
    key = f"/{BUCKET}/train-00001.jsonl.gz"
    drops = Counter[str]()

    def rule(method: str, path: str, start: int | None, number: int) -> str:
        if path == key and method == "GET" and start == 2048 and drops["n"] < FAST.attempts - 1:
            drops["n"] += 1
            return "drop"
        return "ok"

    ctx["rules"][0] = rule
    pipe = ts.read_jsonl(f"s3://{BUCKET}/train-00001.jsonl.gz", storage_options=ctx["options"], retry=FAST)
    assert sorted(delivered(pipe, 0)) == list(range(300, 600))
    at_2048 = [s.action for s in faults.log if s.path == key and s.start == 2048]
    assert at_2048 == ["drop"] * (FAST.attempts - 1) + ["ok"]
    assert_resumed_in_place(faults.log, {key: len(jsonl_shards()["/data/train-00001.jsonl.gz"])}, 256)


def test_s3_webdataset_and_storage_options_stay_out_of_repr(s3: tuple[str, Faults, dict[str, Any]]) -> None:
    _, _, ctx = s3
    pipe = ts.read_webdataset(f"s3://{BUCKET}/train-{{00000..00001}}.tar", storage_options=ctx["options"],
                              retry=RetryPolicy(request_bytes=16384))
    assert sorted(delivered(pipe, 2)) == list(range(120))
    assert "not-a-real-secret" not in repr(pipe)


def test_s3_missing_key_and_access_denied(s3: tuple[str, Faults, dict[str, Any]]) -> None:
    _, _, ctx = s3
    options = ctx["options"]
    with pytest.raises(ShardNotFoundError, match=rf"^s3://{BUCKET}/nope.jsonl.gz: shard not found"):
        delivered(ts.read_jsonl(f"s3://{BUCKET}/nope.jsonl.gz", storage_options=options, retry=FAST), 0)
    ctx["rules"][0] = lambda method, path, start, number: "status:403"
    with pytest.raises(RemoteAccessError, match=rf"^s3://{BUCKET}/train-00000.jsonl.gz: access denied"):
        delivered(ts.read_jsonl(f"s3://{BUCKET}/train-00000.jsonl.gz", storage_options=options, retry=FAST), 0)


# ------------------------------------------------------------------ objects replaced during a read
# Two versions of one shard, line for line of equal length (pair(i) and pair(i + 104) differ
# only in their numbers): a read stitched at a line boundary would parse without an error.
OLD, NEW = range(100, 150), range(204, 254)
OLD_BYTES, NEW_BYTES = jsonl_bytes(OLD), jsonl_bytes(NEW)
TWENTY_LINES = len(jsonl_bytes(OLD[:20]))  # one range request = 20 lines
assert len(OLD_BYTES) == len(NEW_BYTES)


def replaced_at_second_range(key: str, replace: Callable[[str], None]) -> Faults:
    """The object at ``key`` is replaced by its new version just before its second range is served."""
    def rule(method: str, path: str, start: int | None, number: int) -> str:
        return "replace" if path == key and method == "GET" and start == TWENTY_LINES else "ok"

    return Faults(rule, replace=replace)


def assert_changed_mid_read(
    pipe: ts.Pipeline, on_error: str, shard: str, intact: range, num_workers: int = 0
) -> None:
    """The first 20 lines of the old version arrive, none of the new one; the change is raised or counted."""
    got: list[int] = []
    if on_error == "raise":
        with pytest.raises(RemoteError) as info:
            delivered(pipe, num_workers, got)
        message = str(info.value)
        assert message.startswith(f"{shard}: the object changed during the read ("), message
        assert f"at byte {TWENTY_LINES}); the bytes before came from the old version" in message
        assert set(got) <= set(OLD[:20]) | set(intact)
    else:
        delivered(pipe, num_workers, got)
        assert Counter(got) == Counter([*OLD[:20], *intact])
        stats = pipe.stats()
        assert stats.skipped == {"shard changed": 1}
        assert [(e.place, e.reason) for e in stats.errors] == [(shard, "shard changed")]
        assert "the object changed during the read" in stats.errors[0].message
    assert not set(got) & set(NEW)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("server", ["honours If-Match", "ignores If-Match", "no ETag, new size"])
def test_http_object_replaced_mid_read_is_a_shard_fault(server: str, on_error: str) -> None:
    """Item 3: never 20 old plus 30 new records. The pin is the ETag (If-Match, or compared in each
    answer when the server ignores If-Match), else the total size in Content-Range."""
    new = NEW_BYTES if server != "no ETag, new size" else jsonl_bytes(range(204, 264))
    files = {"/data/a.jsonl": OLD_BYTES, "/data/b.jsonl": jsonl_bytes(range(300, 340))}
    faults = replaced_at_second_range("/data/a.jsonl", lambda path: files.__setitem__(path, new))
    retry = RetryPolicy(initial_delay=0.001, request_bytes=TWENTY_LINES)
    with serve_files(files, faults, etags=server != "no ETag, new size",
                     if_match=server == "honours If-Match") as url:
        pipe = ts.read_jsonl([url + "/data/a.jsonl", url + "/data/b.jsonl"], on_error=on_error, retry=retry)
        intact = range(300, 340) if on_error == "skip" else range(0)
        assert_changed_mid_read(pipe, on_error, url + "/data/a.jsonl", intact)
    answers = [s.action for s in faults.log if s.path == "/data/a.jsonl" and s.method == "GET"]
    assert answers == ["ok", "replace"]  # found at the first answer from the new version, not retried


def test_http_object_replaced_mid_read_with_two_workers_is_counted_once() -> None:
    files = {"/data/a.jsonl": OLD_BYTES, "/data/b.jsonl": jsonl_bytes(range(300, 340))}
    faults = replaced_at_second_range("/data/a.jsonl", lambda path: files.__setitem__(path, NEW_BYTES))
    retry = RetryPolicy(initial_delay=0.001, request_bytes=TWENTY_LINES)
    with serve_files(files, faults) as url:
        pipe = ts.read_jsonl([url + "/data/a.jsonl", url + "/data/b.jsonl"], on_error="skip",
                             retry=retry).balance("off")
        assert_changed_mid_read(pipe, "skip", url + "/data/a.jsonl", range(300, 340), num_workers=2)


@pytest.mark.parametrize("on_error", ["raise", "skip"])
@pytest.mark.parametrize("if_match", [True, False], ids=["honours IfMatch", "ignores IfMatch"])
def test_s3_object_replaced_mid_read_is_a_shard_fault(if_match: bool, on_error: str) -> None:
    bucket = f"changing-{if_match}-{on_error}".lower()
    objects = {"a.jsonl": OLD_BYTES, "b.jsonl": jsonl_bytes(range(300, 340))}
    state: dict[str, Any] = {}
    faults = replaced_at_second_range(
        f"/{bucket}/a.jsonl", lambda path: state["client"].put_object(Bucket=bucket, Key="a.jsonl", Body=NEW_BYTES)
    )
    with s3_bucket(bucket, faults, if_match=if_match, objects=objects) as (options, client):
        state["client"] = client
        retry = RetryPolicy(initial_delay=0.001, request_bytes=TWENTY_LINES)
        pipe = ts.read_jsonl([f"s3://{bucket}/a.jsonl", f"s3://{bucket}/b.jsonl"], on_error=on_error,
                             storage_options=options, retry=retry)
        intact = range(300, 340) if on_error == "skip" else range(0)
        assert_changed_mid_read(pipe, on_error, f"s3://{bucket}/a.jsonl", intact)


def test_s3_version_aware_read_keeps_the_version_it_began_with() -> None:
    """With bucket versioning and version_aware=True, the read is pinned to its VersionId: all of the old version."""
    bucket = "versioned-pairs"
    state: dict[str, Any] = {}
    faults = replaced_at_second_range(
        f"/{bucket}/a.jsonl", lambda path: state["client"].put_object(Bucket=bucket, Key="a.jsonl", Body=NEW_BYTES)
    )
    with s3_bucket(bucket, faults, versioned=True, objects={"a.jsonl": OLD_BYTES}) as (options, client):
        state["client"] = client
        pipe = ts.read_jsonl(f"s3://{bucket}/a.jsonl", storage_options={**options, "version_aware": True},
                             retry=RetryPolicy(initial_delay=0.001, request_bytes=TWENTY_LINES))
        assert delivered(pipe, 0) == list(OLD)
        # The next read begins with the new version.
        assert delivered(pipe, 0) == list(NEW)


# ------------------------------------------------------------------ read timeout
@pytest.mark.parametrize("stall", ["stall", "wait"], ids=["mid-body", "before the answer"])
@pytest.mark.parametrize("store", ["http", "s3"])
def test_stalled_requests_time_out_and_resume_exactly_once(store: str, stall: str) -> None:
    """Item 14: two requests at one range stall for 30 s; with read_timeout=0.5 each is retried after
    half a second, at the same byte, and every record arrives once (aiohttp alone waits 300 s)."""
    data = jsonl_bytes(range(1000, 1100))
    key = "/stalling/train.jsonl" if store == "s3" else "/data/train.jsonl"
    stalls = Counter[str]()

    def rule(method: str, path: str, start: int | None, number: int) -> str:
        if path == key and method == "GET" and start == 1024 and stalls["n"] < 2:
            stalls["n"] += 1
            return f"{stall}:30"
        return "ok"

    faults = Faults(rule)
    retry = RetryPolicy(initial_delay=0.001, request_bytes=1024, read_timeout=0.5)
    began = time.monotonic()
    if store == "http":
        with serve_files({key: data}, faults) as url:
            got = delivered(ts.read_jsonl(url + key, retry=retry), 0)
    else:
        with s3_bucket("stalling", faults, objects={"train.jsonl": data}) as (options, _):
            got = delivered(ts.read_jsonl("s3:/" + key, storage_options=options, retry=retry), 0)
    elapsed = time.monotonic() - began
    assert got == list(range(1000, 1100))
    at_1024 = [s.action for s in faults.log if s.path == key and s.start == 1024]
    assert at_1024 == [f"{stall}:30", f"{stall}:30", "ok"]
    assert elapsed < 15, elapsed  # two timeouts of 0.5 s, not two stalls of 30 s


def test_a_store_that_stalls_for_good_fails_after_attempts_times_read_timeout() -> None:
    def rule(method: str, path: str, start: int | None, number: int) -> str:
        return "stall:30" if method == "GET" and start == 1024 else "ok"

    faults = Faults(rule)
    retry = RetryPolicy(attempts=3, initial_delay=0.001, request_bytes=1024, read_timeout=0.3)
    began = time.monotonic()
    with serve_files({"/data/train.jsonl": jsonl_bytes(range(100))}, faults) as url:
        with pytest.raises(RemoteError) as info:
            delivered(ts.read_jsonl(url + "/data/train.jsonl", retry=retry), 0)
    assert time.monotonic() - began < 15
    message = str(info.value)
    assert message.startswith(f"{url}/data/train.jsonl: reading bytes 1024-2047 failed 3 times, last with "
                              "TimeoutError: no data for 0.3 s reading bytes 1024-2047 (RetryPolicy.read_timeout)")
    assert len([s for s in faults.log if s.start == 1024]) == 3


def test_read_timeout_has_a_default_and_is_validated() -> None:
    assert RetryPolicy().read_timeout == 60.0
    assert RetryPolicy(read_timeout=None).read_timeout is None
    for bad in (0, -1.0):
        with pytest.raises(ConfigError, match="read_timeout must be > 0 seconds or None"):
            RetryPolicy(read_timeout=bad)


# ------------------------------------------------------------------ configuration and safety
def test_gs_without_gcsfs_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry makes `import gcsfs` fail, installed or not (fsspec and the test extra need not have it).
    monkeypatch.setitem(sys.modules, "gcsfs", None)
    with pytest.raises(ConfigError, match="gcsfs"):
        delivered(ts.read_jsonl("gs://bucket/train.jsonl.gz"), 0)


def test_pipe_specs_are_refused_unless_allowed(tmp_path: Any) -> None:
    shard = tmp_path / "pairs.jsonl"
    shard.write_bytes(jsonl_bytes(range(5)))
    spec = f"pipe:cat {shard}"
    for reader in (ts.read_jsonl, ts.read_webdataset):
        with pytest.raises(ConfigError, match="'pipe:' specs run a shell command.*allow_pipe=True"):
            reader(spec)
        with pytest.raises(ConfigError, match="allow_pipe=True"):
            reader([str(shard), spec], on_error="skip")
    assert delivered(ts.read_jsonl(spec, allow_pipe=True), 0) == list(range(5))


def test_failing_pipe_command_is_a_corrupt_shard(tmp_path: Any) -> None:
    pipe = ts.read_jsonl(["pipe:echo '[\"a b\", \"c\"]'; exit 3"], allow_pipe=True, on_error="skip")
    records = list(pipe)
    assert [r["anchor"] for r in records] == ["a b"]
    assert pipe.stats().skipped == {"corrupt shard": 1}


@pytest.mark.parametrize(
    "error, kind",
    [
        (ConnectionResetError("reset"), "transient"),
        (TimeoutError(), "transient"),
        (FileNotFoundError("x"), "missing"),
        (PermissionError("x"), "denied"),
        (ValueError("bad"), "permanent"),
    ],
)
def test_classify_plain_errors(error: Exception, kind: str) -> None:
    assert classify(error) == kind


def test_classify_reads_the_cause_chain() -> None:
    """fsspec turns a HEAD that got a 503 into FileNotFoundError: it is still transient."""
    try:
        try:
            raise ConnectionResetError("503 upstream")
        except ConnectionResetError as exc:
            raise FileNotFoundError("http://x/y") from exc
    except FileNotFoundError as wrapped:
        assert classify(wrapped) == "transient"


def test_retry_policy_is_bounded_and_validated() -> None:
    policy = RetryPolicy(initial_delay=1.0, multiplier=2.0, max_delay=5.0, jitter=0.0)
    assert [policy.delay(k) for k in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    jittered = RetryPolicy(initial_delay=1.0, jitter=0.5)
    assert all(0.5 <= jittered.delay(1) <= 1.0 for _ in range(100))
    with pytest.raises(ConfigError):
        RetryPolicy(attempts=0)
    with pytest.raises(ConfigError):
        RetryPolicy(jitter=2.0)
