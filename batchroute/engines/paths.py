"""Where a job's data lives: a file, a directory, a glob or an s3:// URL, as a list of files.

The local engine reads local files: an s3:// input is first copied, file by file, into the
directory `input.path` names (under `.batchroute/remote/`), and an s3:// output is written
locally, then uploaded when the run ends. The Ray engine reads the URL itself, through the
same filesystem (`s3_filesystem`). Credentials come from the environment variables the job
names in `storage_options`; their values never enter the job, the outputs or a message.
"""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from batchroute.errors import ConfigError, DatasetError, OutputError, one_line
from batchroute.job import Job, StorageOptions
from batchroute.lock import output_lock
from batchroute.sink import METADATA_KEY

SUFFIXES = (".parquet", ".csv")
_GLOB = frozenset("*?[")


def is_glob(text: str) -> bool:
    return any(char in _GLOB for char in text)


def _data_file(name: str) -> bool:
    """A data file of a directory: .parquet or .csv, not hidden nor a writer's marker."""
    base = name.rsplit("/", 1)[-1]
    return base.lower().endswith(SUFFIXES) and not base.startswith((".", "_"))


def local_files(path: Path, *, where: str) -> list[Path]:
    """The files of a local `input.path`: itself, a directory's data files, or a glob's."""
    text = str(path)
    if is_glob(text):
        anchor = Path(text[: min(text.index(c) for c in _GLOB if c in text)]).parent
        pattern = str(path.relative_to(anchor))
        found = sorted(p for p in anchor.glob(pattern) if p.is_file() and _data_file(p.name))
        if not found:
            raise DatasetError(f"{where}: the glob matches no .parquet or .csv file")
        return found
    if path.is_dir():
        found = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and _data_file(p.name) and not _hidden(p.relative_to(path))
        )
        if not found:
            raise DatasetError(f"{where}: the directory holds no .parquet or .csv file")
        return found
    return [path]


def _hidden(relative: Path) -> bool:
    return any(part.startswith((".", "_")) for part in relative.parts)


def s3_filesystem(options: StorageOptions | None, *, where: str) -> pafs.S3FileSystem:
    """pyarrow's S3 filesystem, with the keys read from the variables the job names.

    `where` names the job key (`job.toml: input.storage_options`) in errors.
    """
    options = options or StorageOptions()
    kwargs: dict[str, object] = {}
    for key, variable in (
        ("access_key", options.access_key_id_env),
        ("secret_key", options.secret_access_key_env),
        ("session_token", options.session_token_env),
    ):
        if variable is None:
            continue
        value = os.environ.get(variable)
        if not value:
            raise ConfigError(f"{where}: environment variable {variable} is not set")
        kwargs[key] = value
    if options.endpoint_url is not None:
        parts = urlsplit(options.endpoint_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ConfigError(f"{where}.endpoint_url: not an http(s) URL")
        kwargs["endpoint_override"] = parts.netloc
        kwargs["scheme"] = parts.scheme
    if options.region is not None:
        kwargs["region"] = options.region
    if options.anonymous:
        kwargs["anonymous"] = True
    try:
        return pafs.S3FileSystem(**kwargs)
    except (pa.ArrowException, OSError) as exc:
        raise ConfigError(f"{where}: {one_line(exc)}") from None


def object_path(url: str) -> str:
    """`s3://bucket/key` as pyarrow names it: `bucket/key`."""
    return url.removeprefix("s3://").rstrip("/")


def remote_files(url: str, fs: pafs.FileSystem, *, where: str) -> list[str]:
    """The data files an s3:// `input.path` names (`bucket/key` each), sorted: the object,
    every data file under the prefix, or those matching the glob."""
    base = object_path(url)
    try:
        if is_glob(base):
            prefix = base[: min(base.index(c) for c in _GLOB if c in base)].rsplit("/", 1)[0]
            listed = fs.get_file_info(pafs.FileSelector(prefix, recursive=True))
            found = [
                i.path
                for i in listed
                if i.type == pafs.FileType.File and fnmatch.fnmatchcase(i.path, base)
            ]
        else:
            info = fs.get_file_info(base)
            if info.type == pafs.FileType.File:
                return [base]
            listed = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
            found = [i.path for i in listed if i.type == pafs.FileType.File]
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"{where}: cannot list the input: {one_line(exc)}") from None
    found = sorted(p for p in found if _data_file(p))
    if not found:
        raise DatasetError(f"{where}: no .parquet or .csv object there")
    return found


def input_where(job: Job) -> str:
    return f"{job.source}: input.path"


def stage_input(job: Job) -> None:
    """Copy an s3:// input's files into `input.path` (a local directory), replacing an older
    copy. Blocking. The names under the URL are kept, so the files sort as they do there."""
    url = job.input.url
    if url is None:
        return
    where = input_where(job)
    fs = s3_filesystem(job.input.storage_options, where=f"{job.source}: input.storage_options")
    files = remote_files(url, fs, where=where)
    base = object_path(url)
    root = base if len(files) > 1 or files[0] != base else base.rsplit("/", 1)[0]
    if is_glob(base):
        root = base[: min(base.index(c) for c in _GLOB if c in base)].rsplit("/", 1)[0]
    target = job.input.path
    # Under the job's lock: a second run of the job started while the first reads the copy
    # stops here (JobBusy), before it could replace the files under the first.
    with output_lock(job.output.path, where=f"{job.source}: output.path"):
        _copy(fs, files, root=root, target=target, where=where)


def _copy(fs: pafs.FileSystem, files: list[str], *, root: str, target: Path, where: str) -> None:
    shutil.rmtree(target, ignore_errors=True)
    for name in files:
        local = target / name[len(root) :].lstrip("/")
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            with fs.open_input_stream(name) as source, local.open("wb") as sink:
                shutil.copyfileobj(source, sink, length=1 << 20)
        except (pa.ArrowException, OSError) as exc:
            raise DatasetError(f"{where}: cannot read s3://{name}: {one_line(exc)}") from None


def remote_outputs(job: Job) -> list[tuple[Path, str]]:
    """(local file, s3:// URL) of each output the job sends to an object store."""
    pairs = []
    if job.output.url is not None:
        pairs.append((job.output.path, job.output.url))
    if job.output.calls_url is not None:
        pairs.append((job.output.calls_path, job.output.calls_url))
    return pairs


def _output_fs(job: Job) -> pafs.S3FileSystem:
    return s3_filesystem(job.output.storage_options, where=f"{job.source}: output.storage_options")


def check_remote_outputs(job: Job, *, force: bool) -> None:
    """An object an output would replace must have been written by this job (or --force),
    as for a local output. Blocking."""
    pairs = remote_outputs(job)
    if not pairs or force:
        return
    fs = _output_fs(job)
    for _, url in pairs:
        try:
            if fs.get_file_info(object_path(url)).type != pafs.FileType.File:
                continue
            with fs.open_input_file(object_path(url)) as handle:
                raw = pq.read_metadata(handle).metadata or {}
        except (pa.ArrowException, OSError):
            raw = {}
        value = raw.get(METADATA_KEY.encode())
        previous = json.loads(value).get("job_key") if value else None
        if previous != job.key():
            raise OutputError(
                f"{url}: exists and was not written by this job; pass --force to replace it"
            )


def upload_outputs(job: Job) -> None:
    """Send the finished local outputs to their s3:// URLs. Blocking."""
    pairs = remote_outputs(job)
    if not pairs:
        return
    fs = _output_fs(job)
    for local, url in pairs:
        try:
            with local.open("rb") as source, fs.open_output_stream(object_path(url)) as sink:
                shutil.copyfileobj(source, sink, length=1 << 20)
        except (pa.ArrowException, OSError) as exc:
            raise OutputError(f"{url}: cannot upload the output: {one_line(exc)}") from None
