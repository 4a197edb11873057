"""Cleaning stages of the data pipeline, run on a Ray Data dataset of corpus rows.

Rows carry `text`, optionally `label` (classification), `target` (translation) or `question`, `answer` and
`answer_start` (question answering, where `text` is the context), `source` (where the row came from), `row_id`
(unique; smaller is earlier in the corpus) and `stage` / `reason`, both "" while the row is kept. No stage removes
rows: each one marks the rows it drops with its name in `stage` and a human-readable `reason`, and skips rows an
earlier stage dropped (so a dropped row never counts as the copy that is kept).
The caller then splits kept rows from quarantined ones.

Stages, in this order (`STAGES`), each optional except `empty`:
- normalize: NFKC, control characters removed, spaces and blank lines collapsed (text, target, question and answer);
  drops nothing.
- empty: no text, or a missing label (labelled data), target (translation data), question or answer.
- length_chars: text shorter than `min_chars` or longer than `max_chars` characters.
- labels: a label outside the job's label set, or one text given different labels (all its rows dropped:
  nobody can tell which label is right).
- dedup_exact: every copy of a text (with its partners: a translation's target, a question and its answer) but the
  earliest: other questions on the same context are other examples.
- dedup_near: MinHash LSH over lowercase word shingles. Two texts are near-duplicates when the estimated Jaccard
  similarity of their shingle sets reaches `threshold`: the share of distinct `shingle_words`-word sequences
  they have in common (0.8: about one word in thirty changed, with 3-word shingles); the texts compared include
  their partners. Near-duplicates are grouped transitively and each group keeps its earliest row.
Token-length limits (min_tokens / max_tokens) run later, once the tokenizer exists.

Decisions depend on row_id only, never on the order in which Ray delivers rows, so a rerun drops the same rows.
"""

import hashlib
import math
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import ray.data
from ray.data.dataset import MaterializedDataset

from orchestrator.config.job import CleanConfig, NearDedupConfig
from orchestrator.data.read import source_of
from orchestrator.data.staging import stage

STAGES = ("normalize", "empty", "length_chars", "labels", "dedup_exact", "dedup_near")
STAGE_CODES = {stage: code for code, stage in enumerate(STAGES)}  # a verdict's stage, in one byte
NOT_DROPPED = -1
# may hold None; a block of only None reaches numpy as float NaN
_OPTIONAL_STRINGS = ("text", "label", "target", "question", "answer", "answer_start")
PARTNERS = ("target", "question", "answer")  # the columns that, beside its text, make a row another example
NORMALIZED = ("text", "target", "question", "answer")
MINHASH_SEED = 1

_SPACES = re.compile(r"[ \t]+")
_BLANK_LINES = re.compile(r"\n{3,}")


# --- pure functions --------------------------------------------------------------------------------------------


def normalize_text(text: str) -> str:
    """NFKC (ligatures, full-width forms, odd spaces), control characters removed, runs of spaces and tabs made
    one space, lines stripped, at most one blank line in a row: copies that differ only in such noise become
    equal for deduplication, and the tokenizer never sees invisible characters."""
    lines = unicodedata.normalize("NFKC", text).splitlines()  # every line break (\r\n, \r, U+2028...) becomes \n
    text = "\n".join(_SPACES.sub(" ", _without_controls(line)).strip() for line in lines)
    return _BLANK_LINES.sub("\n\n", text).strip()


def _without_controls(line: str) -> str:
    """Drops Unicode category C* (control, format, private use, unassigned) except tabs."""
    if line.replace("\t", " ").isprintable():  # fast path: a printable line has no C* character
        return line
    return "".join(char for char in line if char == "\t" or unicodedata.category(char)[0] != "C")


def is_filled(value) -> bool:
    return isinstance(value, str) and bool(value.strip())


def row_verdict(
    text,
    required: dict,
    min_chars: int | None = None,
    max_chars: int | None = None,
    known_labels: set | None = None,
) -> tuple[str, str] | None:
    """(stage, reason) of the first row-level stage (empty, length_chars, unknown label) that drops this row,
    or None. `required`: the other fields that must be non-empty, by name (label, target); `known_labels`: the
    labels allowed, None when labels are not checked."""
    if not is_filled(text):
        return "empty", "empty text"
    for name, value in required.items():
        if not is_filled(value):
            return "empty", f"missing {name}"
    if min_chars and len(text) < min_chars:
        return "length_chars", f"shorter than min_chars ({len(text)} < {min_chars})"
    if max_chars and len(text) > max_chars:
        return "length_chars", f"longer than max_chars ({len(text)} > {max_chars})"
    if known_labels is not None and required["label"] not in known_labels:
        return "labels", f"unknown label {required['label']!r}"
    return None


def copy_keys(texts: Sequence[str], partners: Sequence | None = None) -> np.ndarray:
    """An (n, 2) int64 array: a 128-bit hash of what exact deduplication compares of each row, its text and its
    partners (None, a str or a tuple of them: a translation's target, a question and its answer), joined by 0xff, a
    byte UTF-8 never holds, so no two rows join alike."""
    partners = partners if partners is not None else [None] * len(texts)
    digests = (
        hashlib.blake2b(b"\xff".join(field.encode() for field in (text, *_fields(partner))), digest_size=16).digest() for text, partner in zip(texts, partners)
    )
    return np.frombuffer(b"".join(digests), dtype=np.int64).reshape(-1, 2)


def _fields(partner) -> tuple[str, ...]:
    return () if partner is None else (partner,) if isinstance(partner, str) else tuple(partner)


def copy_key_columns(texts: Sequence[str], partners: Sequence | None, row_ids, labels=None) -> dict:
    """What copy_drops reads of the rows it judges: their copy_keys (key_hi, key_lo), row_id, and label when conflicts
    are checked."""
    keys = copy_keys(texts, partners)
    columns = {"key_hi": keys[:, 0], "key_lo": keys[:, 1], "row_id": np.asarray(row_ids, dtype=np.int64)}
    if labels is not None:
        columns["label"] = np.asarray(labels, dtype=object)
    return columns


def grouped(keys: list[np.ndarray], row_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The order that sorts rows by `keys`, then row_id, and where in that order each group of rows with equal keys
    starts (a boolean mask): each group's first row is its earliest."""
    order = np.lexsort((row_ids, *reversed(keys)))  # lexsort sorts by its last key first
    starts = np.zeros(len(order), dtype=bool)
    starts[:1] = True
    for key in keys:
        ordered = key[order]
        starts[1:] |= ordered[1:] != ordered[:-1]
    return order, starts


def copy_drops(keys: dict, check_conflicts: bool, dedup_exact: bool) -> dict:
    """The rows to drop among kept rows that share a text (`keys`: columns row_id, key_hi and key_lo from copy_keys,
    and label when conflicts are checked), as verdicts (see verdicts()): every row of a text given different labels,
    then every copy of a text (with its partners, see copy_keys) but the earliest, which it names."""
    order, starts = grouped([keys["key_hi"], keys["key_lo"]], keys["row_id"])
    firsts = np.flatnonzero(starts)
    group = np.cumsum(starts) - 1
    first = firsts[group]  # each row's group's earliest row, in sorted order
    stage = np.full(len(order), NOT_DROPPED, dtype=np.int8)
    conflict = np.full(len(order), "", dtype=object)
    if check_conflicts:
        labels = keys["label"][order]
        ends = np.append(firsts[1:], len(order))
        for conflicted in np.unique(group[labels != labels[first]]):
            rows = slice(firsts[conflicted], ends[conflicted])
            stage[rows], conflict[rows] = STAGE_CODES["labels"], ", ".join(sorted(set(labels[rows])))
    if dedup_exact:
        stage[(first != np.arange(len(order))) & (stage == NOT_DROPPED)] = STAGE_CODES["dedup_exact"]
    dropped = stage != NOT_DROPPED
    row_ids = keys["row_id"][order].astype(np.int64)
    return verdicts(row_ids[dropped], stage[dropped], of=row_ids[first][dropped], labels=conflict[dropped])


def candidate_pairs(bands: dict) -> dict:
    """(earliest row_id, other row_id) of each row sharing a band key with an earlier one (`bands`: columns band and
    row_id), as columns kept and other, each pair once."""
    order, starts = grouped([bands["band"]], bands["row_id"])
    row_ids = bands["row_id"][order].astype(np.int64)
    first = row_ids[np.flatnonzero(starts)][np.cumsum(starts) - 1]
    pairs = np.unique(np.stack([first, row_ids], axis=1)[first != row_ids], axis=0)
    return {"kept": pairs[:, 0], "other": pairs[:, 1]}


def shingles(text: str, words_per_shingle: int) -> list[str]:
    """Lowercase word n-grams: the units whose overlap near-deduplication measures. A text of fewer words is
    one shingle, so short texts still get a signature."""
    words = text.lower().split()
    if len(words) <= words_per_shingle:
        return [" ".join(words)]
    return [" ".join(words[i : i + words_per_shingle]) for i in range(len(words) - words_per_shingle + 1)]


def dedup_text(text: str, partner) -> str:
    """What near-deduplication compares: the text and its partners (see copy_keys; like dedup_exact, one source
    sentence with two different translations, or one context with two questions, is two examples)."""
    return "\n".join((text, *_fields(partner)))


# datasketch (with scipy: half a second) is imported where near-dedup runs, not by every driver (a cache hit cleans
# nothing)
def minhash_signatures(texts: Iterable[str], num_perm: int, words_per_shingle: int) -> list[np.ndarray]:
    """MinHash values of each text; the seed is fixed so every task computes comparable signatures."""
    from datasketch import MinHash

    template = MinHash(num_perm=num_perm, seed=MINHASH_SEED)
    signatures = []
    for text in texts:
        minhash = template.copy()
        minhash.update_batch([shingle.encode() for shingle in shingles(text, words_per_shingle)])
        signatures.append(minhash.hashvalues)
    return signatures


def lsh_bands(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows per band) minimising false positives plus false negatives at `threshold`, as datasketch's
    MinHashLSH picks them (its constructor refuses the single band it picks for e.g. 16 permutations at 0.9)."""
    from datasketch.lsh import _optimal_param

    return _optimal_param(threshold, num_perm, 0.5, 0.5)


def band_keys(signature: np.ndarray, bands: int, rows: int) -> list[int]:
    """One bucket key per band: texts sharing any band are candidate near-duplicates."""
    return [_hash64(band.to_bytes(2, "little") + signature[band * rows : (band + 1) * rows].tobytes()) for band in range(bands)]


def near_groups(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Near-duplicates joined into groups through the similar pairs (first[i], second[i]) of row_ids: each group
    keeps its lowest row_id. Returns the rows to drop and, for each, the row kept in its place (which a row joined
    through a chain of pairs may be less similar to than the threshold)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    nodes, ends = np.unique(np.concatenate([first, second]), return_inverse=True)
    edges = coo_matrix((np.ones(len(first), dtype=np.int8), (ends[: len(first)], ends[len(first) :])), shape=(len(nodes),) * 2)
    _, group = connected_components(edges, directed=False)
    lowest = np.full(group.max(initial=-1) + 1, np.iinfo(np.int64).max)
    np.minimum.at(lowest, group, nodes)  # nodes are sorted: each group keeps its lowest row_id
    kept = lowest[group]
    return nodes[nodes != kept], kept[nodes != kept]


def pair_similarities(bucket: dict) -> dict:
    """The estimated similarity of each pair of a bucket of signature rows (columns pair, signature): a pair's two
    rows, whatever their order."""
    order = np.argsort(bucket["pair"], kind="stable")
    signatures = np.asarray(bucket["signature"])[order]
    return {"pair": bucket["pair"][order][0::2], "similarity": (signatures[0::2] == signatures[1::2]).mean(axis=1).astype(np.float32)}


def verdicts(row_ids=(), stage=(), of=(), similarity=None, labels=None) -> dict:
    """The rows a dedup stage drops, in about 30 bytes each whatever the corpus's paths (the driver holds them all,
    and every task that marks rows reads them): columns row_id, stage (its STAGE_CODES), of (the row_id of the row
    kept in its place), similarity (near duplicates', else NaN) and labels (a label conflict's, else ""), sorted by
    row_id as _with_drops and _kept_rows look them up. drop_reason says it in words."""
    row_ids = np.asarray(row_ids, dtype=np.int64)
    columns = {
        "row_id": row_ids,
        "stage": np.asarray(stage, dtype=np.int8),
        "of": np.asarray(of, dtype=np.int64),
        "similarity": np.full(len(row_ids), np.nan, dtype=np.float32) if similarity is None else np.asarray(similarity, dtype=np.float32),
        "labels": np.full(len(row_ids), "", dtype=object) if labels is None else np.asarray(labels, dtype=object),
    }
    order = np.argsort(row_ids, kind="stable")
    return {name: values[order] for name, values in columns.items()}


def joined(*parts: dict) -> dict:
    """Several stages' verdicts as one."""
    return verdicts(*(np.concatenate([part[name] for part in parts]) for name in ("row_id", "stage", "of", "similarity", "labels")))


def drop_reason(stage: str, of: int, similarity: float, labels: str, files: Sequence[str]) -> str:
    """A dedup verdict in words, naming the file and line of the row kept in its place."""
    if stage == "labels":
        return f"conflicting labels: {labels}"
    kept = source_of(of, files)
    return f"duplicate of {kept}" if stage == "dedup_exact" else f"near-duplicate (jaccard {similarity:.2f}) of {kept}"


def _hash64(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)


# --- Ray Data batch functions (numpy batches) -----------------------------------------------------------------


def _strings(values: np.ndarray) -> np.ndarray:
    """An object array of str or None: Ray hands a column of only nulls over as float NaN."""
    return np.array([value if isinstance(value, str) else None for value in values], dtype=object)


def _rows(batch: dict) -> dict:
    """A writable copy of the row columns, string columns as object arrays."""
    rows = {name: values.copy() for name, values in batch.items()}
    rows.update({name: _strings(batch[name]) for name in _OPTIONAL_STRINGS if name in batch})
    rows.update({name: batch[name].astype(object) for name in ("stage", "reason", "source")})
    return rows


def _dropped(row_ids: np.ndarray, drops: dict) -> tuple[np.ndarray, np.ndarray]:
    """Which of `row_ids` `drops` holds (a mask), and where in it (drops' row_ids are sorted)."""
    at = np.searchsorted(drops["row_id"], row_ids)
    hit = at < len(drops["row_id"])
    hit[hit] = drops["row_id"][at[hit]] == row_ids[hit]
    return hit, at[hit]


def _with_drops(batch: dict, drops: "ray.ObjectRef", files: Sequence[str]) -> dict:
    rows = _rows(batch)
    drops = ray.get(drops)
    hit, at = _dropped(rows["row_id"], drops)
    stages = [STAGES[code] for code in drops["stage"][at]]
    rows["stage"][hit] = np.array(stages, dtype=object)
    details = zip(stages, drops["of"][at].tolist(), drops["similarity"][at].tolist(), drops["labels"][at])
    rows["reason"][hit] = np.array([drop_reason(*detail, files) for detail in details], dtype=object)
    return rows


def _row_stages(batch: dict, normalize: bool, min_chars, max_chars, known_labels, labelled: bool) -> dict:
    rows = _rows(batch)
    fields = (["label"] if labelled else []) + [name for name in PARTNERS if name in rows]
    for i in range(len(rows["row_id"])):
        if rows["stage"][i]:
            continue
        if normalize:
            for name in NORMALIZED:
                if name in rows and isinstance(rows[name][i], str):
                    rows[name][i] = normalize_text(rows[name][i])
        required = {name: rows[name][i] if name in rows else None for name in fields}
        verdict = row_verdict(rows["text"][i], required, min_chars, max_chars, known_labels)
        if verdict:
            rows["stage"][i], rows["reason"][i] = verdict
    return rows


def _kept_rows(batch: dict, drops: "ray.ObjectRef | None" = None) -> np.ndarray:
    """The positions of the rows no stage has dropped, `drops` (a dedup stage's, not yet applied) included."""
    kept = batch["stage"] == ""
    if drops is not None:
        kept &= ~_dropped(batch["row_id"], ray.get(drops))[0]
    return np.flatnonzero(kept)


def _copy_key_rows(batch: dict, buckets: int, labelled: bool) -> dict:
    """One row per kept row: what copy_drops reads of it, and its bucket."""
    kept = _kept_rows(batch)
    labels = _strings(batch["label"][kept]) if labelled else None
    columns = copy_key_columns(_strings(batch["text"][kept]), _partners(batch, kept), batch["row_id"][kept], labels)
    return {**columns, "bucket": np.remainder(columns["key_hi"], buckets)}


def _dedup_texts(batch: dict, positions: np.ndarray) -> list[str]:
    """What near-deduplication compares of the rows at `positions` in the batch."""
    partners = _partners(batch, positions)
    return [dedup_text(batch["text"][i], partners[n] if partners else None) for n, i in enumerate(positions)]


def _partners(batch: dict, positions: np.ndarray) -> list[tuple[str, ...]] | None:
    """The partners (PARTNERS the batch has) of the rows at `positions`, None when it has none."""
    present = [_strings(batch[name][positions]) for name in PARTNERS if name in batch]
    return list(zip(*present)) if present else None


def _kept_dedup_texts(batch: dict, drops: "ray.ObjectRef | None" = None) -> tuple[np.ndarray, list[str]]:
    """The kept rows' positions in the batch and what near-deduplication compares of them."""
    kept = _kept_rows(batch, drops)
    return kept, _dedup_texts(batch, kept)


def _band_rows(batch: dict, num_perm: int, shingle_words: int, bands: int, rows: int, buckets: int, drops) -> dict:
    """One (band key, row_id) row per band of each kept row: its signature is hashed into band keys and dropped."""
    kept, texts = _kept_dedup_texts(batch, drops)
    keys = np.array([band_keys(signature, bands, rows) for signature in minhash_signatures(texts, num_perm, shingle_words)], dtype=np.int64).reshape(-1)
    return {"band": keys, "bucket": np.remainder(keys, buckets), "row_id": np.repeat(batch["row_id"][kept], bands)}


def _pair_signature_rows(batch: dict, ends: "ray.ObjectRef", num_perm: int, shingle_words: int, buckets: int) -> dict:
    """One row per pair end in this batch (`ends`: the row_id and pair of each end of each pair, sorted by row_id):
    the pair, the row's MinHash signature (its values are below 2**32), and the pair's bucket."""
    ends = ray.get(ends)
    first, last = np.searchsorted(ends["row_id"], batch["row_id"], "left"), np.searchsorted(ends["row_id"], batch["row_id"], "right")
    rows = np.flatnonzero(last > first)
    signatures = np.array(minhash_signatures(_dedup_texts(batch, rows), num_perm, shingle_words), dtype=np.uint32).reshape(-1, num_perm)
    times = last[rows] - first[rows]  # the pairs each row is in
    # each row's ends, first[row] up to last[row], laid end to end
    at = np.arange(times.sum()) + np.repeat(first[rows] - (np.cumsum(times) - times), times)
    pairs = ends["pair"][at]
    return {"pair": pairs, "signature": np.repeat(signatures, times, axis=0), "bucket": np.remainder(pairs, buckets)}


# --- stages on a dataset ---------------------------------------------------------------------------------------

KEYS_PER_BUCKET = 100_000  # dedup keys judged in one call: the groups are few, each judged by numpy, not one by one
# Key rows (16-32 bytes each) a block entering the bucket shuffle. Ray's sort shuffle cuts each of its N blocks into N
# pieces, and the driver holds the pieces under 100 KB itself: 2 million key rows in 254 blocks (a staged pass's
# blocks) cost the driver 467 MB and 9.5 s, in 4 blocks 21 MB and 0.6 s.
KEY_ROWS_PER_BLOCK = 1_000_000


def _bucketed(dataset: MaterializedDataset, judge, **kwargs) -> dict:
    """Groups `dataset`'s key rows by their `bucket` column, runs `judge` on each bucket, and returns the columns it
    returns, concatenated (what a dedup stage finds: far fewer rows than its keys)."""
    blocks = dataset.repartition(num_blocks=math.ceil(dataset.count() / KEY_ROWS_PER_BLOCK) or 1)
    found = blocks.groupby("bucket").map_groups(judge, batch_format="numpy", fn_kwargs=kwargs)
    batches = list(found.iter_batches(batch_format="numpy", batch_size=None))
    return {name: np.concatenate([batch[name] for batch in batches]) for name in batches[0]} if batches else {}


def _buckets(rows: int) -> int:
    return max(1, rows // KEYS_PER_BUCKET)


def clean(
    rows: ray.data.Dataset, cfg: CleanConfig, labels: list[str] | None, labelled: bool, files: Sequence[str], staging: Path
) -> tuple[ray.data.Dataset, int]:
    """Runs the cleaning stages on `rows` (see the module docstring) and returns every row, the dropped ones
    marked in `stage` and `reason`, with their number. `labels`: the job's label set, None to accept any label;
    `labelled`: the rows have a `label` column to check; `files`: the corpus's files, which row_ids number.

    The row stages stream the rows into parquet files in `staging` (an empty directory), which every later pass
    reads: the dedup stages' and the caller's (kept rows, then quarantined ones). The object store holds the blocks
    in flight, never the corpus, and the stages run once. The dedup stages shuffle small key rows, not the rows:
    hashes of texts (exact) or of MinHash bands (near), grouped into buckets that numpy judges whole. What they find,
    the rows to drop as compact verdicts (verdicts()), comes to the driver and is shared with the tasks that read
    the rows, which mark them as they pass: the one thing of these stages that grows with the corpus is held whole,
    and it grows with its duplicates."""
    check_labels = labelled and cfg.check_labels
    rows = rows.map_batches(
        _row_stages,
        batch_format="numpy",
        fn_kwargs=dict(
            normalize=cfg.normalize,
            min_chars=cfg.min_chars,
            max_chars=cfg.max_chars,
            known_labels=set(labels) if check_labels and labels is not None else None,
            labelled=labelled,
        ),
    )
    staged = stage(rows, staging)
    rows, count = staged.read(), staged.rows
    drops = verdicts()
    if check_labels or cfg.dedup_exact:
        keys = rows.map_batches(_copy_key_rows, batch_format="numpy", fn_kwargs=dict(buckets=_buckets(count), labelled=check_labels))
        if found := _bucketed(keys.materialize(), copy_drops, check_conflicts=check_labels, dedup_exact=cfg.dedup_exact):
            drops = joined(found)
    if cfg.dedup_near:
        drops = joined(drops, _dedup_near(rows, count, cfg.dedup_near, ray.put(drops)))
    if len(drops["row_id"]):
        rows = rows.map_batches(_with_drops, batch_format="numpy", fn_kwargs=dict(drops=ray.put(drops), files=list(files)))
    return rows, count


def _dedup_near(rows: ray.data.Dataset, count: int, cfg: NearDedupConfig, drops: "ray.ObjectRef") -> dict:
    """MinHash LSH without a central index and without keeping signatures: tasks turn each row kept so far (not in
    `drops`) into its band keys (8 bytes a band, not 4 a permutation), and the band buckets give the candidate pairs
    (few). Tasks verify them (_similarities), the driver joins the similar ones into groups (near_groups, on row_ids
    alone), and tasks measure each dropped row's similarity to the row kept in its place. Returns the rows to drop,
    as verdicts: the driver never holds a signature."""
    bands, rows_per_band = lsh_bands(cfg.threshold, cfg.num_perm)
    banded = rows.map_batches(
        _band_rows,
        batch_format="numpy",
        fn_kwargs=dict(num_perm=cfg.num_perm, shingle_words=cfg.shingle_words, bands=bands, rows=rows_per_band, buckets=_buckets(count * bands), drops=drops),
    )
    candidates = _bucketed(banded.materialize(), candidate_pairs)
    if not candidates or not len(candidates["kept"]):
        return verdicts()
    similar = _similarities(rows, candidates["kept"], candidates["other"], cfg) >= cfg.threshold
    dropped, kept = near_groups(candidates["kept"][similar], candidates["other"][similar])
    stage = np.full(len(dropped), STAGE_CODES["dedup_near"], dtype=np.int8)
    return verdicts(dropped, stage, of=kept, similarity=_similarities(rows, kept, dropped, cfg))


def _similarities(rows: ray.data.Dataset, first: np.ndarray, second: np.ndarray, cfg: NearDedupConfig) -> np.ndarray:
    """The estimated similarity of each pair (first[i], second[i]) of row_ids: the tasks that hold a pair's rows
    send their signatures to the pair's bucket, and a task compares them there (pair_similarities)."""
    if not len(first):
        return np.zeros(0, dtype=np.float32)
    pair = np.arange(len(first))
    row_ids, pairs = np.concatenate([first, second]), np.concatenate([pair, pair])
    order = np.argsort(row_ids, kind="stable")
    ends = ray.put({"row_id": row_ids[order], "pair": pairs[order]})
    signed = rows.map_batches(
        _pair_signature_rows,
        batch_format="numpy",
        fn_kwargs=dict(ends=ends, num_perm=cfg.num_perm, shingle_words=cfg.shingle_words, buckets=_buckets(len(row_ids))),
    )
    found = _bucketed(signed.materialize(), pair_similarities)
    similarity = np.empty(len(first), dtype=np.float32)
    similarity[found["pair"]] = found["similarity"]
    return similarity
