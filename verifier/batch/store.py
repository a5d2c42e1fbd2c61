"""The results store of a batch run: SQLite in WAL mode, one committed row per finished sample.

Why SQLite rather than an append-only JSONL file: each sample is one transaction, so a process
killed mid-write leaves the last complete row and never a torn one; the sample index is the
primary key, so a rerun cannot duplicate a row; the settings live in the same file (a store
from another model, data set or setting is refused instead of mixed); and the report reads it
with plain queries. WAL with synchronous=FULL makes every commit durable (fsync) at a cost of
milliseconds per sample, against seconds of verification.

Table `meta` holds the settings (JSON), the model's input shape (the blobs are flat float32;
stores made before the shape was kept get it on their next run, and read as flat until then)
and the reruns of unknown samples (`reruns`: each one's timeout, start, samples, finished).

A run at several radii (settings "eps" a list) keeps one row per (sample, eps): table `results`
has an `eps` column (the last) and the key ("index", "eps"). A sample's rows are committed in one
transaction, so a sample is done when it has a row at every radius. Stores made before the
column existed (one row per sample, "index" the key) are rebuilt with it on their next run, each
row's eps filled from their settings, in one transaction (a crash leaves the old table or the new).
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import numpy as np

from verifier.errors import InputError

#: Columns of a result row, in the order of results.csv (arrays are stored apart, as blobs).
COLUMNS = ["index", "label", "prediction", "verdict", "margin_lower", "margin_upper", "adversarial_label",
           "decided_by", "solver_status", "time", "distortion_norm", "distortion_status", "distortion_lower",
           "distortion_upper", "distortion_label", "distortion_time"]
ARRAYS = ["counterexample", "distortion_example"]
EPS = "eps"  # the radius column: the last of the table, not a results.csv column of one-eps runs
_TYPES = {"index": "INTEGER", "label": "INTEGER", "prediction": "INTEGER", "adversarial_label": "INTEGER",
          "distortion_label": "INTEGER", "verdict": "TEXT", "decided_by": "TEXT", "solver_status": "TEXT",
          "distortion_norm": "TEXT", "distortion_status": "TEXT"}


_SCHEMA = ", ".join([f'"{c}" {_TYPES.get(c, "REAL")}' for c in COLUMNS] + [f'"{a}" BLOB' for a in ARRAYS]
                    + [f'"{EPS}" REAL NOT NULL', f'PRIMARY KEY ("index", "{EPS}")'])

#: Settings that only describe (file names): a moved or renamed file with the same bytes resumes.
DESCRIPTIVE = {"model", "data"}


def _flat(settings: dict, prefix: str = "") -> dict:
    """Nested settings as one level of dotted keys ("options.timeout"), so that a refusal names
    the one field that differs instead of printing two whole option dicts."""
    out = {}
    for key, value in settings.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class ResultStore:
    """Open (or create) `folder/results.sqlite` for runs with these `settings`."""

    def __init__(self, folder: str | Path, settings: dict, input_shape=None, may_differ: frozenset = frozenset()) -> None:
        """`input_shape`: the model's, kept so that the flat blobs can be read back as arrays of
        that shape (stores made before it was kept get it on their next run). `may_differ`:
        dotted settings keys allowed to differ from the store's (a rerun's "options.timeout");
        the store keeps its own settings, the caller records what it changed."""
        self.folder = Path(folder)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InputError(f"{self.folder}: cannot create the report folder: {e.strerror}") from None
        self.path = self.folder / "results.sqlite"
        eps = settings.get("eps")
        self.radii = [float(e) for e in eps] if isinstance(eps, (list, tuple)) else [eps]
        try:
            self.db = sqlite3.connect(self.path)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
            with self.db:
                self.db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT)")
                self.db.execute(f"CREATE TABLE IF NOT EXISTS results ({_SCHEMA})")
            self._claim(settings, may_differ)
            self._add_eps_column()
            if input_shape is not None and self.input_shape is None:
                self._set("input_shape", [int(d) for d in input_shape])
        except sqlite3.Error as e:
            raise InputError(f"{self.path}: cannot use it as a results store ({e})") from None

    def _claim(self, settings: dict, may_differ: frozenset) -> None:
        mine = json.dumps(settings, sort_keys=True)
        row = self.db.execute("SELECT value FROM meta WHERE key = 'settings'").fetchone()
        if row is None:
            with self.db:
                self.db.execute("INSERT INTO meta VALUES ('settings', ?)", (mine,))
            return
        theirs, ours = _flat(json.loads(row[0])), _flat(json.loads(mine))
        differ = sorted(k for k in set(theirs) | set(ours)
                        if k not in DESCRIPTIVE and k not in may_differ and theirs.get(k) != ours.get(k))
        if differ:
            detail = "; ".join(f"{k}: store has {theirs.get(k)!r}, this run {ours.get(k)!r}" for k in differ[:3])
            if len(differ) > 3:
                detail += f"; and {len(differ) - 3} more"
            raise InputError(f"{self.path} holds results of other settings ({detail}); "
                             "use another --report folder or remove it")

    def _add_eps_column(self) -> None:
        """Rebuild a store made before the eps column (key "index") with it (key ("index", "eps")),
        each row's eps from the settings, in one transaction."""
        present = [r[1] for r in self.db.execute("PRAGMA table_info(results)")]
        if EPS in present:
            return
        eps = self.settings.get("eps")
        kept = ", ".join(f'"{c}"' for c in COLUMNS + ARRAYS if c in present)
        self.db.execute("BEGIN IMMEDIATE")
        with self.db:  # commits, or rolls back on an error
            self.db.execute("ALTER TABLE results RENAME TO results_before_eps")
            self.db.execute(f"CREATE TABLE results ({_SCHEMA})")
            self.db.execute(f'INSERT INTO results ({kept}, "{EPS}") SELECT {kept}, ? FROM results_before_eps', (eps,))
            self.db.execute("DROP TABLE results_before_eps")

    @property
    def settings(self) -> dict:
        return self._get("settings")

    def _get(self, key: str):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def _set(self, key: str, value) -> None:
        with self.db:
            self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """The model's input shape (without the batch dimension), None in a store made before
        it was kept: the shape to read a flat array back as (`store.array(row, name)`)."""
        shape = self._get("input_shape")
        return None if shape is None else tuple(shape)

    @property
    def reruns(self) -> list[dict]:
        """What `--rerun-unknown` did to this store, oldest first: timeout, when, the samples it
        set out to rerun and how many of them it finished."""
        return self._get("reruns") or []

    def begin_rerun(self, timeout: float, indices: list[int]) -> int:
        """Record a rerun before any row changes (a kill midway still leaves its trace)."""
        import datetime

        reruns = self.reruns
        reruns.append({"timeout": timeout, "started": datetime.datetime.now().isoformat(timespec="seconds"),
                       "indices": [int(i) for i in indices], "finished": 0, "interrupted": None})
        self._set("reruns", reruns)
        return len(reruns) - 1

    def end_rerun(self, number: int, finished: int, interrupted: bool) -> None:
        reruns = self.reruns
        reruns[number].update(finished=int(finished), interrupted=bool(interrupted))
        self._set("reruns", reruns)

    def done(self) -> set[int]:
        """Samples with a result at every radius (a sample whose run raised an error is tried
        again)."""
        marks = ", ".join("?" * len(self.radii))
        query = (f'SELECT "index" FROM results WHERE solver_status IS NOT \'error\' AND "{EPS}" IN ({marks}) '
                 f'GROUP BY "index" HAVING COUNT(DISTINCT "{EPS}") = ?')
        return {r[0] for r in self.db.execute(query, (*self.radii, len(self.radii)))}

    def add(self, row: dict, arrays: dict[str, np.ndarray | None]) -> None:
        """Commit one result row (durable when this returns); a row without "eps" is at the
        run's one radius."""
        self.add_many([(row, arrays)])

    def add_many(self, results: list[tuple[dict, dict]]) -> None:
        """Commit one sample's rows (one per radius) in one transaction."""
        names = ", ".join(f'"{c}"' for c in COLUMNS + ARRAYS + [EPS])
        marks = ", ".join("?" * (len(COLUMNS) + len(ARRAYS) + 1))
        try:
            with self.db:
                for row, arrays in results:
                    values = [row.get(c) for c in COLUMNS] + [
                        None if arrays.get(a) is None else np.asarray(arrays[a], dtype=np.float32).tobytes()
                        for a in ARRAYS] + [row.get(EPS, self.radii[0] if len(self.radii) == 1 else None)]
                    if values[-1] is None:
                        raise InputError(f"{self.path}: a row of sample {row.get('index')} has no eps")
                    self.db.execute(f"INSERT OR REPLACE INTO results ({names}) VALUES ({marks})", values)
        except sqlite3.Error as e:  # e.g. disk full: what is committed stays, the run stops clearly
            raise InputError(f"{self.path}: cannot store sample {results[0][0].get('index')} ({e})") from None

    def rows(self, indices=None) -> list[dict]:
        """Result rows (sorted by index, then eps; only `indices` if given, and only the run's
        radii), arrays decoded to float32; each row has its "eps"."""
        names = COLUMNS + ARRAYS + [EPS]
        quoted = ", ".join(f'"{c}"' for c in names)
        out = []
        wanted = None if indices is None else set(int(i) for i in indices)
        radii = set(self.radii)
        for values in self.db.execute(f'SELECT {quoted} FROM results ORDER BY "index", "{EPS}"'):
            row = dict(zip(names, values))
            if (wanted is not None and row["index"] not in wanted) or row[EPS] not in radii:
                continue
            for a in ARRAYS:
                row[a] = None if row[a] is None else np.frombuffer(row[a], dtype=np.float32)
            out.append(row)
        return out

    def array(self, row: dict, name: str) -> np.ndarray | None:
        """A row's array in the model's input shape (flat when the store does not know it)."""
        flat = row.get(name)
        shape = self.input_shape
        return flat if flat is None or shape is None else flat.reshape(shape)

    def close(self) -> None:
        self.db.close()
