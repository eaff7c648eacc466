"""Write a mixture to disk in chunks: parallel, resumable, shardable, never all in memory.

A build has two stages:

1. **Chunks.** The plan's items are cut into chunks of ``chunk_size``; each chunk is made
   (by one of ``num_proc`` worker processes) and written atomically into a *parts folder*
   as ``chunks/<index>/{train,validation,test}`` (Arrow, ``save_to_disk``) plus the chunk's
   ``skipped.jsonl``. A chunk that exists is complete, so rerunning a killed build skips
   the chunks already there and ends with exactly the rows of an uninterrupted build.
   With ``shard=(I, N)`` only chunks ``c`` with ``c mod N == I`` are made.
2. **Join.** The chunks of one or more parts folders (all shards of the same plan) are
   concatenated, in chunk order, into a ``datasets.DatasetDict`` saved atomically, with a
   dataset card (``README.md``), ``samples.png``, ``skipped.jsonl`` and ``mixture.yaml``.

A single-machine build keeps its parts in ``<out>.parts`` next to ``<out>`` and removes
them once joined. Folders are removed by renaming them to a hidden sibling first, and a build
starts by clearing what a killed build left (a half-written ``.<out>.tmp-*``, a half-removed
folder): a kill at any moment never blocks a rerun or ``--overwrite`` (issue 17). Every row depends only on the seed and its item index (see
:mod:`instructsd.data.rows`), so the result is the same for any ``num_proc``, any
chunk order and any sharding.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import json
import multiprocessing
import os
import re
import shutil
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import datasets
import yaml
from tqdm.auto import tqdm

from instructsd.data.card import card, columns, sample_rows, samples_grid
from instructsd.data.layouts import SPLIT_NAMES
from instructsd.data.load import open_saved
from instructsd.data.mixture import ROW_KEYS, Mixture, load_mixture
from instructsd.data.plan import Plan, make_plan
from instructsd.data.ray_engine import check_engine, write_chunks_on_ray
from instructsd.data.rows import make_rows
from instructsd.errors import InstructSDError
from instructsd.files import atomic_write_text

PLAN_FILE = "plan.json"
CHUNK_ROWS = "rows.json"  # a chunk's row count per split, written with it: how a complete chunk is told apart


class NothingBuilt(InstructSDError):
    """Every source image was skipped: there is no dataset to write."""


def features(mixture: Mixture) -> datasets.Features:
    """The one schema (:data:`instructsd.data.load.COLUMNS`), under the mixture's column names."""
    cols = mixture.columns
    return datasets.Features({
        cols["input_image"]: datasets.Image(),
        cols["edit_prompt"]: datasets.Value("string"),
        cols["edited_image"]: datasets.Image(),
        **{key: datasets.Value("string") for key in ROW_KEYS},  # task, source, group, part, edit_params
    })


def parse_shard(text: str) -> tuple[int, int]:
    """``"2/8"`` -> ``(2, 8)``; I counts from 0."""
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise InstructSDError(f"--shard must look like I/N (e.g. 0/4), got {text!r}") from None
    if not (n >= 1 and 0 <= i < n):
        raise InstructSDError(f"--shard {text}: need N >= 1 and 0 <= I < N")
    return i, n


# --- stage 1: chunks -----------------------------------------------------------------------


def build_mixture(
    mixture: Mixture | str | Path,
    out_dir: str | Path,
    *,
    num_proc: int = 1,
    shard: tuple[int, int] = (0, 1),
    overwrite: bool = False,
    progress: bool = True,
    command: str | None = None,
    source_licenses: Sequence[Mapping[str, str]] | None = None,
    engine: str = "local",
    address: str | None = None,
) -> datasets.DatasetDict | None:
    """Build the dataset a mixture describes into ``out_dir``.

    Args:
        mixture: a :class:`Mixture` or the path of its YAML file.
        out_dir: the dataset folder; with ``shard=(I, N)``, N > 1, the folder for this
            shard's parts, to be combined by :func:`join_parts`.
        num_proc: worker processes; the output does not depend on it.
        shard: ``(I, N)``: make only every N-th chunk, starting at I.
        overwrite: replace an existing ``out_dir`` (and discard stale parts).
        progress: show a progress bar.
        command: what rebuilds the dataset, for the card (default: the mixture build).
        source_licenses: ``[{source, license}]`` of the photos, for the card, when the mixture
            cannot say (photos passed in from Python).
        engine: ``local`` (``num_proc`` processes here) or ``ray`` (chunks as Ray Data blocks,
            :mod:`instructsd.data.ray_engine`; ``num_proc`` CPUs for a local Ray instance); the
            same chunk files, so the same dataset.
        address: a Ray cluster to run on (``engine="ray"``); default a local instance.

    Returns:
        The saved dataset, or ``None`` for a shard (its parts folder is the result).

    Raises:
        InstructSDError: bad mixture, missing folders, unknown layouts, unmatched pairs,
            an existing ``out_dir`` -- all before any image is processed; or every source
            image was skipped (:class:`NothingBuilt`, reasons named).
    """
    if not isinstance(mixture, Mixture):
        mixture = load_mixture(mixture)
    if num_proc < 1:
        raise InstructSDError(f"num_proc must be at least 1, got {num_proc}")
    check_engine(engine, address, num_proc)
    out_dir = Path(out_dir).absolute()
    sharded = shard[1] > 1
    clear_debris(out_dir)
    if not sharded:
        clear_debris(out_dir.with_name(out_dir.name + ".parts"))
    if not sharded and out_dir.exists():
        _check_replaceable(out_dir, overwrite=overwrite)  # before any work, not after it
    plan = make_plan(mixture)
    parts = out_dir if sharded else out_dir.with_name(out_dir.name + ".parts")
    _open_parts(parts, plan, shard, overwrite=overwrite,
                card_info={"command": command, "licenses": list(source_licenses or []) or None})
    todo = [c for c in range(plan.n_chunks) if c % shard[1] == shard[0]
            and not chunk_complete(parts / "chunks" / _chunk_name(c))]
    bar = tqdm(total=len(todo), desc="building chunks", unit="chunk", disable=not progress)
    try:
        if engine == "ray":
            for _ in write_chunks_on_ray(write_chunk, plan, todo, parts, address=address,
                                         num_cpus=num_proc, progress=progress):
                bar.update()
        elif num_proc == 1 or len(todo) <= 1:
            with _datasets_progress(False):
                for c in todo:
                    write_chunk(plan, c, parts)
                    bar.update()
        else:
            ctx = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods()
                                              else "spawn")
            with cf.ProcessPoolExecutor(num_proc, mp_context=ctx, initializer=_init_worker) as pool:
                for future in cf.as_completed([pool.submit(write_chunk, plan, c, parts) for c in todo]):
                    future.result()
                    bar.update()
    finally:
        bar.close()
    if sharded:
        return None
    try:
        dataset = join_parts([parts], out_dir, overwrite=overwrite, progress=progress)
    except NothingBuilt:
        remove_tree(parts)  # a rerun would skip the same images: nothing to resume
        raise
    remove_tree(parts)
    return dataset


def _init_worker() -> None:
    """Worker processes: no nested progress bars. (OpenCV's thread count is left alone:
    changing it in a forked child can deadlock on the pool inherited from the parent.)"""
    datasets.disable_progress_bars()


def _chunk_name(c: int) -> str:
    return f"{c:06d}"


def _open_parts(parts: Path, plan: Plan, shard: tuple[int, int], *, overwrite: bool, card_info: dict) -> None:
    """Create ``parts`` or check that it belongs to this plan (then its chunks are reused)."""
    meta = {"fingerprint": plan.fingerprint(), "n_chunks": plan.n_chunks, "n_items": plan.n_items,
            "shard": list(shard), "mixture": json.loads(json.dumps(dict(plan.mixture.raw), default=str)),
            "skipped": plan.skipped, "card": card_info}
    plan_file = parts / PLAN_FILE
    if parts.exists():
        if not plan_file.is_file():
            if not _only_chunks(parts):
                raise InstructSDError(f"'{parts}' exists and is not an instructsd parts folder; "
                                      "choose another output folder")
            remove_tree(parts)  # chunks whose plan a kill removed: nothing can tell what they were made from
        else:
            old = json.loads(plan_file.read_text())
            if old["fingerprint"] != meta["fingerprint"]:
                if not overwrite:
                    raise InstructSDError(
                        f"'{parts}' holds chunks of a different mixture or different source files; "
                        "delete it, or pass --overwrite to start over"
                    )
                remove_tree(parts)
    (parts / "chunks").mkdir(parents=True, exist_ok=True)
    for chunk in (parts / "chunks").iterdir():
        if chunk.name.startswith(".") or not chunk_complete(chunk):  # a chunk a kill cut short, writing or removing it
            remove_tree(chunk)
    atomic_write_text(plan_file, json.dumps(meta, indent=1))


def write_chunk(plan: Plan, c: int, parts: Path) -> None:
    """Make chunk ``c`` and write it atomically under ``parts/chunks``."""
    cs = plan.mixture.chunk_size
    rows, skipped = make_rows(plan, range(c * cs, min((c + 1) * cs, plan.n_items)))
    feats = features(plan.mixture)
    final = parts / "chunks" / _chunk_name(c)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        for split in SPLIT_NAMES:
            data = [row for s, row in rows if s == split]
            if data:  # an empty split is no folder: datasets cannot reload a 0-row save
                datasets.Dataset.from_list(data, features=feats).save_to_disk(str(tmp / split))
        (tmp / "skipped.jsonl").write_text("".join(json.dumps(s) + "\n" for s in skipped))
        counts = {split: sum(1 for s, _ in rows if s == split) for split in SPLIT_NAMES}
        (tmp / CHUNK_ROWS).write_text(json.dumps(counts))
        try:
            tmp.rename(final)
        except OSError:  # another writer of this chunk was first (a cancelled or retried Ray task):
            if not chunk_complete(final):  # its rows are these rows, so its chunk stands
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# --- stage 2: join -------------------------------------------------------------------------


def join_parts(
    parts_dirs: Sequence[str | Path], out_dir: str | Path, *, overwrite: bool = False,
    progress: bool = True,
) -> datasets.DatasetDict:
    """Concatenate the chunks of ``parts_dirs`` (shards of one plan) into a dataset at ``out_dir``.

    Raises:
        InstructSDError: a folder is not a parts folder, the parts come from different
            mixtures, or some chunks are missing (their shards are named); :class:`NothingBuilt`
            when no chunk holds a row.
    """
    out_dir = Path(out_dir).absolute()
    clear_debris(out_dir)
    if out_dir.exists():
        _check_replaceable(out_dir, overwrite=overwrite)
    if not parts_dirs:
        raise InstructSDError("give at least one parts folder to join")
    metas, chunks = [], {}
    for d in map(Path, parts_dirs):
        if not (d / PLAN_FILE).is_file():
            raise InstructSDError(f"'{d}' is not a parts folder (no {PLAN_FILE}); give the folders "
                                  "written by `instructsd data build --shard I/N`")
        metas.append(json.loads((d / PLAN_FILE).read_text()))
        for chunk in (d / "chunks").iterdir():
            if not chunk.name.startswith(".") and chunk_complete(chunk):
                chunks.setdefault(int(chunk.name), chunk)
    if len({m["fingerprint"] for m in metas}) > 1:
        raise InstructSDError("the parts folders come from different mixtures or sources; "
                              "join only the shards of one build")
    meta = metas[0]
    missing = sorted(set(range(meta["n_chunks"])) - set(chunks))
    if missing:
        n = meta["shard"][1]
        shards = sorted({c % n for c in missing})
        raise InstructSDError(
            f"{len(missing)} of {meta['n_chunks']} chunks are missing (e.g. {missing[:5]}); "
            f"(re)run the build for shard(s) {', '.join(f'{s}/{n}' for s in shards)} and join again"
        )
    order = [chunks[c] for c in range(meta["n_chunks"])]
    feats = features(Mixture(components=(), columns=columns(meta["mixture"])))
    skipped = "".join(json.dumps(s) + "\n" for s in meta.get("skipped", []))
    skipped += "".join((p / "skipped.jsonl").read_text() for p in order)
    if not any((p / split).is_dir() for p in order for split in SPLIT_NAMES):
        records = [json.loads(line) for line in skipped.splitlines() if line.strip()]
        why = f"; first: {records[0]['source']}: {records[0]['reason']}" if records else ""
        raise NothingBuilt(f"no pairs were made: all {len(records)} items were skipped{why}; "
                           "details in the parts' skipped.jsonl -- fix or remove those images")
    with _datasets_progress(progress):
        dataset = datasets.DatasetDict()
        for split in SPLIT_NAMES:
            pieces = [datasets.load_from_disk(str(p / split)) for p in order if (p / split).is_dir()]
            if pieces or split != "test":  # a test split only where the sources have one
                dataset[split] = (datasets.concatenate_datasets(pieces) if pieces else
                                  datasets.Dataset.from_dict({k: [] for k in feats}, features=feats))
    mixture_raw, card_info = meta["mixture"], meta.get("card") or {}

    def write(folder: Path) -> None:
        with _datasets_progress(progress):
            # an empty split needs an explicit shard or it cannot be loaded back
            dataset.save_to_disk(str(folder), num_shards={s: 1 for s, d in dataset.items() if len(d) == 0})
        (folder / "skipped.jsonl").write_text(skipped)
        (folder / "mixture.yaml").write_text(yaml.safe_dump(mixture_raw, sort_keys=False))
        grid = sample_rows(dataset, mixture_raw)
        samples_grid(grid).save(folder / "samples.png")
        (folder / "README.md").write_text(card(dataset, mixture_raw, skipped, command=card_info.get("command"),
                                               licenses=card_info.get("licenses")), encoding="utf-8")

    save_atomically(write, out_dir, overwrite=overwrite)
    return datasets.load_from_disk(str(out_dir))


# --- a kill's debris -----------------------------------------------------------------------


def chunk_complete(chunk: Path) -> bool:
    """Whether ``chunk`` holds every split its ``rows.json`` names, each with all its data files.

    A chunk is renamed into place whole, but a kill while a folder holding it was deleted can
    leave it in part; such a chunk is made again. (Chunks written before ``rows.json`` existed
    count as complete when their ``skipped.jsonl``, written last, is there.)
    """
    if not chunk.is_dir() or not (chunk / "skipped.jsonl").is_file():
        return False
    if not (chunk / CHUNK_ROWS).is_file():
        return True
    try:
        counts = json.loads((chunk / CHUNK_ROWS).read_text())
        for split, n in counts.items():
            if n:
                state = json.loads((chunk / split / "state.json").read_text())
                if not all((chunk / split / f["filename"]).is_file() for f in state["_data_files"]):
                    return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _only_chunks(parts: Path) -> bool:
    """Whether ``parts`` holds nothing but chunk folders (a parts folder whose plan.json is gone)."""
    chunk = re.compile(r"^(\d{6}|\.\d{6}\.(tmp|trash)-[0-9a-f]+)$")
    entries = list(parts.iterdir())
    return all(e.name == "chunks" and e.is_dir() and all(chunk.match(c.name) for c in e.iterdir()) for e in entries)


def remove_tree(path: Path) -> None:
    """Delete a folder so that no kill leaves it half-deleted under its own name: it is renamed to
    a hidden sibling first (atomic), which a later build clears (:func:`clear_debris`)."""
    if not path.exists():
        return
    trash = path.with_name(f".{path.name}.trash-{uuid.uuid4().hex[:8]}")
    path.rename(trash)
    shutil.rmtree(trash, ignore_errors=True)


def clear_debris(folder: Path) -> None:
    """Clear what killed builds left beside ``folder``: hidden ``.<name>.tmp-*`` (a dataset or
    parts being written), ``.trash-*`` (being deleted) and ``.old-*`` (being replaced) siblings.

    An ``.old-*`` with no ``folder`` is the dataset an ``--overwrite`` had moved aside when the
    kill came: it is put back, so the rerun finds what was there before.
    """
    folder = Path(os.path.abspath(folder))
    if not folder.parent.is_dir():
        return
    pattern = re.compile(rf"^\.{re.escape(folder.name)}\.(tmp|old|trash)-[0-9a-f]{{8}}$")
    for debris in sorted(folder.parent.iterdir()):
        kind = pattern.match(debris.name)
        if not kind or not debris.is_dir():
            continue
        if kind.group(1) == "old" and not folder.exists():
            debris.rename(folder)
        else:
            shutil.rmtree(debris, ignore_errors=True)


# --- atomic save --------------------------------------------------------------------------


def save_atomically(write: Callable[[Path], None], out_dir: Path, *, overwrite: bool) -> None:
    """Run ``write(tmp)`` on a fresh sibling folder, then rename it to ``out_dir``.

    A crash or error leaves either nothing or the previous ``out_dir``, never a half-written
    dataset that ``load_from_disk`` might half-read. The rename is atomic because the
    temporary folder is on the same filesystem (same parent).
    """
    out_dir = Path(os.path.abspath(out_dir))  # "." and "a/.." have no name to make a sibling of
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir()
    try:
        write(tmp)
        old = _move_aside(out_dir, overwrite=overwrite)
        try:
            tmp.rename(out_dir)
        except BaseException:
            if old is not None:
                old.rename(out_dir)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old)


def _move_aside(out_dir: Path, *, overwrite: bool) -> Path | None:
    """Rename an existing ``out_dir`` out of the way (checked again: it may have appeared meanwhile)."""
    if not out_dir.exists():
        return None
    _check_replaceable(out_dir, overwrite=overwrite)
    old = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    out_dir.rename(old)
    return old


def _check_replaceable(out_dir: Path, *, overwrite: bool) -> None:
    """Refuse to replace ``out_dir`` unless asked to, and never replace anything that isn't a dataset."""
    if not overwrite:
        raise InstructSDError(f"output folder '{out_dir}' exists; pass overwrite=True (--overwrite) "
                              "or choose another folder")
    # overwrite deletes the old folder: only do that to a dataset (or an empty folder), so a
    # mistyped path such as the home directory is never wiped.
    if not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "dataset_dict.json").is_file()):
        raise InstructSDError(f"'{out_dir}' exists and is not a dataset built by instructsd; refusing to replace "
                              "it even with overwrite=True; choose another folder")
    if Path.cwd().resolve().is_relative_to(out_dir.resolve()):
        raise InstructSDError(f"'{out_dir}' is or contains the current directory, which overwrite would delete; "
                              "run from elsewhere or choose another folder")


@contextlib.contextmanager
def _datasets_progress(enabled: bool) -> Iterator[None]:
    """Silence datasets' own bars when ``progress=False``; its switch is global, so restore it."""
    was_disabled = datasets.are_progress_bars_disabled()
    if not enabled:
        datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not enabled and not was_disabled:
            datasets.enable_progress_bars()


# --- export --------------------------------------------------------------------------------


def export_parquet(dataset_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Write each split of a saved dataset as ``<out>/<split>.parquet`` (images as PNG bytes)."""
    dataset = open_saved(dataset_dir)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for split, ds in dataset.items():
        path = out_dir / f"{split}.parquet"
        tmp = path.with_name(f".{path.name}.tmp")
        ds.to_parquet(str(tmp))
        tmp.replace(path)
        paths.append(path)
    return paths


# Files beside the data that `data push` uploads. README.md goes up *before* the data: datasets'
# push_to_hub keeps an existing card and only merges its dataset_info/configs keys into the
# YAML block, so the card and its metadata survive (issue 12: the card was never uploaded).
CARD_FILES = ("README.md", "samples.png", "mixture.yaml", "skipped.jsonl")


def push_files(dataset_dir: str | Path) -> list[Path]:
    """The card files of a saved dataset that ``push_to_hub`` uploads, README.md first; there must be a card."""
    folder = Path(dataset_dir)
    card_path = folder / "README.md"
    if not card_path.is_file():
        raise InstructSDError(f"'{folder}' has no README.md dataset card; rebuild it with `instructsd data build` "
                              "(which writes one) or add one before pushing")
    return [folder / name for name in CARD_FILES if (folder / name).is_file()]


def push_to_hub(dataset_dir: str | Path, repo_id: str, *, private: bool = True) -> None:
    """Upload a saved dataset's card files (:func:`push_files`), then its splits with
    ``DatasetDict.push_to_hub`` (needs a hub token and network)."""
    dataset = open_saved(dataset_dir)
    files = push_files(dataset_dir)
    try:
        from huggingface_hub import CommitOperationAdd, HfApi

        api = HfApi()
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        api.create_commit(repo_id, repo_type="dataset", commit_message="Dataset card (instructsd)",
                          operations=[CommitOperationAdd(path_in_repo=p.name, path_or_fileobj=str(p)) for p in files])
        dataset.push_to_hub(repo_id, private=private)
    except Exception as err:  # noqa: BLE001 -- auth, network, permission
        raise InstructSDError(f"push to '{repo_id}' failed ({type(err).__name__}: {err}); "
                              "log in with `hf auth login` and check the repo id") from err
