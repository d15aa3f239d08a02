"""The fsspec front-end (client/fsspec_fs.py) against a live cluster: fsspec's own abstract
suite (every class the installed fsspec ships), the project's contract suite, URLs and
storage options, pandas and pyarrow through aegisfs:// URLs."""
from __future__ import annotations

import itertools
import os

import fsspec
import fsspec.tests.abstract as abstract
import pytest

from client.fsspec_fs import AegisFileSystem
from tests.contract.suite import FileSystemContract

_seq = itertools.count()


@pytest.fixture(scope="module")
def aegis_fs(cluster):
    fs = AegisFileSystem(cluster.broker, key=cluster.key, skip_instance_cache=True)
    try:
        yield fs
    finally:
        fs.client.close()


class AegisFixtures(abstract.AbstractFixtures):
    @pytest.fixture
    def fs(self, aegis_fs):
        return aegis_fs

    @pytest.fixture
    def fs_join(self):
        # keep a trailing slash on the last part: fsspec gives it a meaning ("into")
        return lambda *parts: "/".join([p.rstrip("/") for p in parts[:-1]] + [parts[-1]])

    @pytest.fixture
    def fs_path(self, aegis_fs):
        path = f"/fsspec-abstract/t{next(_seq)}"
        aegis_fs.makedirs(path, exist_ok=True)
        yield path
        aegis_fs.rm(path, recursive=True)

    @pytest.fixture
    def supports_empty_directories(self):
        return True


def _suites():
    names = [n for n in dir(abstract) if n.startswith("Abstract") and n.endswith("Tests")]
    return {n: getattr(abstract, n) for n in names}


for _name, _suite in _suites().items():   # every class the installed fsspec ships
    _cls = type(f"TestAegis{_name[len('Abstract'):]}", (_suite, AegisFixtures), {})
    globals()[_cls.__name__] = _cls


# -- the project's contract suite through fsspec --------------------------------------

class _FsspecAdapter:
    """The contract's verbs (AegisClient's names) on top of the fsspec API."""

    def __init__(self, fs: AegisFileSystem, block_size: int) -> None:
        self.fs, self.bs = fs, block_size

    def mkdir(self, path, parents=False):
        if parents:
            self.fs.makedirs(path, exist_ok=True)
        else:
            self.fs.mkdir(path, create_parents=False)

    def ls(self, path, detail=False):
        out = self.fs.ls(path, detail=True)
        names = [{"name": os.path.basename(e["name"]), "size": e["size"],
                  "type": "dir" if e["type"] == "directory" else "file"} for e in out]
        return names if detail else [n["name"] for n in names]

    def stat(self, path):
        info = self.fs.info(path)
        return {**info, "type": "dir" if info["type"] == "directory" else "file"}

    def exists(self, path):
        return self.fs.exists(path)

    def write_bytes(self, path, data, parents=True):
        if not parents and not self.fs.exists(os.path.dirname(path.rstrip("/")) or "/"):
            raise FileNotFoundError(2, "No such file or directory", path)
        with self.fs.open(path, "wb", block_size=None) as f:
            f.write(data)

    def read_bytes(self, path, offset=0, length=None):
        return self.fs.cat_file(path, offset, None if length is None else offset + length)

    def rm(self, path, recursive=False):
        self.fs.rm(path, recursive=recursive)

    def mv(self, src, dst):
        into = self.fs.isdir(dst) and src.rstrip("/") != dst.rstrip("/")
        self.fs.mv(src, dst, recursive=True)
        return dst.rstrip("/") + "/" + os.path.basename(src.rstrip("/")) if into else dst

    def du(self, path):
        return self.fs.client.du(path)


class TestContractThroughFsspec(FileSystemContract):
    @pytest.fixture
    def fsc(self, aegis_fs):
        return _FsspecAdapter(aegis_fs, 64 * 1024)

    @pytest.fixture
    def base(self, aegis_fs):
        path = f"/fsspec-contract/t{next(_seq)}"
        aegis_fs.makedirs(path, exist_ok=True)
        return path

    @pytest.fixture
    def block_size(self):
        return 4 * 1024 * 1024


# -- URLs, the entry point, exclusive writes, byte ranges -----------------------------

def test_urls_and_the_entry_point(cluster):
    host = cluster.broker.removeprefix("tcp://")
    assert AegisFileSystem._strip_protocol(f"aegisfs://{host}/a/b/") == "/a/b"
    assert AegisFileSystem._strip_protocol("aegisfs:///a//./b") == "/a/b"
    assert AegisFileSystem._get_kwargs_from_urls(f"aegisfs://{host}/x") == {
        "broker": cluster.broker}
    assert AegisFileSystem._get_kwargs_from_urls("aegisfs://somehost/x") == {
        "broker": "tcp://somehost:5550"}
    fs, path = fsspec.core.url_to_fs(f"aegisfs://{host}/urls/f.txt", key=str(cluster.key))
    assert type(fs) is AegisFileSystem and path == "/urls/f.txt"   # found by entry point
    with fsspec.open(f"aegisfs://{host}/urls/f.txt", "wt", key=str(cluster.key)) as f:
        f.write("hello\n")
    with fsspec.open(f"aegisfs://{host}/urls/f.txt", "rt", key=str(cluster.key)) as f:
        assert f.read() == "hello\n"
    assert fs.info("/urls/f.txt")["size"] == 6 and fs.info("/urls")["type"] == "directory"


def test_exclusive_writes_refuse_an_existing_file_even_when_racing(aegis_fs):
    aegis_fs.pipe_file("/excl/a", b"first", mode="create")
    with pytest.raises(FileExistsError):
        aegis_fs.pipe_file("/excl/a", b"second", mode="create")
    with pytest.raises(FileExistsError):
        aegis_fs.open("/excl/a", "xb")
    # two exclusive writers opened before either commits: the second commit must lose
    one = aegis_fs.open("/excl/b", "xb")
    two = aegis_fs.open("/excl/b", "xb")
    one.write(b"one")
    two.write(b"two")
    one.close()
    with pytest.raises(FileExistsError):
        two.close()
    assert aegis_fs.cat_file("/excl/b") == b"one" and aegis_fs.cat_file("/excl/a") == b"first"


def test_byte_ranges_read_only_what_they_ask(aegis_fs):
    data = bytes(range(256)) * 1000
    aegis_fs.pipe_file("/ranges/f", data)
    assert aegis_fs.cat_file("/ranges/f", 10, 20) == data[10:20]
    assert aegis_fs.cat_file("/ranges/f", -5) == data[-5:]
    assert aegis_fs.cat_file("/ranges/f", 100, -100) == data[100:-100]
    with aegis_fs.open("/ranges/f", "rb") as f:
        f.seek(1000)
        assert f.read(3) == data[1000:1003] and f.size == len(data)
    assert aegis_fs.ukey("/ranges/f") == aegis_fs.ukey("/ranges/f")
    before = aegis_fs.ukey("/ranges/f")
    aegis_fs.pipe_file("/ranges/f", data)             # same bytes, a new version
    assert aegis_fs.ukey("/ranges/f") != before


def test_many_paths_travel_in_batches(aegis_fs):
    items = {f"/batch/f{i:03d}": b"x%d" % i for i in range(300)}
    aegis_fs.pipe(items)
    got = aegis_fs.cat([*items, "/batch/missing"], on_error="omit")
    assert got == items
    with pytest.raises(FileNotFoundError):
        aegis_fs.cat(["/batch/f000", "/batch/missing"])
    assert sorted(aegis_fs.find("/batch")) == sorted(items)


def test_put_get_drive_fsspec_callbacks(aegis_fs, tmp_path):
    from fsspec.callbacks import Callback

    class Seen(Callback):
        def __init__(self):
            super().__init__()
            self.updates = []

        def call(self, *args, **kwargs):
            self.updates.append((self.value, self.size))

    src = tmp_path / "src.bin"
    src.write_bytes(os.urandom(3 * 1024 * 1024 + 5))
    up, down = Seen(), Seen()
    aegis_fs.put_file(str(src), "/cb/f.bin", callback=up)
    aegis_fs.get_file("/cb/f.bin", str(tmp_path / "out" / "f.bin"), callback=down)
    assert (tmp_path / "out" / "f.bin").read_bytes() == src.read_bytes()
    assert up.updates[-1] == (src.stat().st_size, src.stat().st_size)
    assert down.updates[-1] == (src.stat().st_size, src.stat().st_size)


# -- pandas and pyarrow ---------------------------------------------------------------

def test_pandas_csv_and_parquet_through_urls(cluster, tmp_path):
    pd = pytest.importorskip("pandas")
    host = cluster.broker.removeprefix("tcp://")
    df = pd.DataFrame({"city": ["Oslo", "Lima", "Pune", "Kyiv"] * 250,
                       "n": range(1000), "x": [i / 7 for i in range(1000)]})
    so = {"key": str(cluster.key)}          # storage options: the user's key file
    df.to_csv(f"aegisfs://{host}/pd/table.csv", index=False, storage_options=so)
    df.to_csv(tmp_path / "table.csv", index=False)
    back = pd.read_csv(f"aegisfs://{host}/pd/table.csv", storage_options=so)
    pd.testing.assert_frame_equal(back, pd.read_csv(tmp_path / "table.csv"))
    df.to_parquet(f"aegisfs://{host}/pd/table.parquet", storage_options=so)
    df.to_parquet(tmp_path / "table.parquet")
    pd.testing.assert_frame_equal(pd.read_parquet(f"aegisfs://{host}/pd/table.parquet", storage_options=so),
                                  pd.read_parquet(tmp_path / "table.parquet"))


def test_pyarrow_partitioned_dataset_with_a_filter(aegis_fs, tmp_path):
    pa = pytest.importorskip("pyarrow")
    import pyarrow.dataset as ds
    from pyarrow.fs import FSSpecHandler, PyFileSystem

    table = pa.table({"year": [2020 + i % 4 for i in range(2000)],
                      "v": list(range(2000))})
    remote = PyFileSystem(FSSpecHandler(aegis_fs))
    ds.write_dataset(table, "/arrow/ds", filesystem=remote, format="parquet",
                     partitioning=["year"], partitioning_flavor="hive")
    ds.write_dataset(table, str(tmp_path / "ds"), format="parquet",
                     partitioning=["year"], partitioning_flavor="hive")
    flt = ds.field("year") == 2022
    mine = ds.dataset("/arrow/ds", filesystem=remote, format="parquet",
                      partitioning="hive").to_table(filter=flt).sort_by("v")
    local = ds.dataset(str(tmp_path / "ds"), format="parquet",
                       partitioning="hive").to_table(filter=flt).sort_by("v")
    assert mine.equals(local) and mine.num_rows == 500
    assert sorted(os.path.basename(p) for p in aegis_fs.ls("/arrow/ds", detail=False)) == [
        "year=2020", "year=2021", "year=2022", "year=2023"]
