"""A task, read from a small YAML task file and carried whole in every bundle's manifest.

::

    name: busi                      # bundle folder, run folder and CSV default name
    kind: single-label              # single-label | multi-label | segmentation
    classes: [benign, malignant, normal]     # multi-label tasks list labels: instead; segmentation
                                             # tasks map each class to its mask value: {lesion: 255}
    data: {reader: class-folders}   # how to read the training data (see model/readers)
    test_folder: .                  # where the test images are, under run.py's --test-dir
    output: {file: busi_pre.csv}    # the CSV run.py writes
    metric: competition

Every key is checked: an unknown or misspelt key, a wrong type or value is a TaskFileError that names the
file, the key and what would be right. The README documents each key with a complete example.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import yaml

from .errors import TaskFileError
from .keys import unknown_key_message
from .readers import check_reader_options
from .registry import kinds

TASK_KEYS = ("name", "title", "kind", "classes", "labels", "positive", "data", "test_folder", "output", "metric",
             "train")
OUTPUT_KEYS = ("file", "id", "id_header", "columns", "values", "rle_order")
RLE_ORDERS = ("column", "row")
ID_MODES = {"number": "id", "filename": "img_name"}  # how the id column is filled -> its default header


def default_csv_name(name: str) -> str:
    """The CSV a task writes when its output names no file, and the name a broken bundle's stale output
    is looked for under."""
    return f"{name}_pre.csv"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def check_keys(mapping: dict, valid, where: str) -> None:
    for key in mapping:
        if key not in valid:
            raise TaskFileError(f"{where}: {unknown_key_message(str(key), valid)}")


@dataclass(frozen=True)
class Output:
    file: str
    id: str                  # number | filename
    id_header: str
    columns: tuple[str, ...]
    values: str              # labels | names | probabilities; masks | rle | summary (the kind says which)
    rle_order: str = "column"   # rle outputs: column-major (Kaggle) or row-major pixel numbering

    def header_for(self, id_mode: str | None) -> str:
        """The id column's header when run.py writes ids by ``id_mode`` (--id-column): the task's own header
        for its own mode, else that mode's default."""
        return self.id_header if not id_mode or id_mode == self.id else ID_MODES[id_mode]


@dataclass(frozen=True)
class Task:
    name: str
    kind: object             # a model.kinds.Kind
    heads: tuple[str, ...]   # the classes (single-label, segmentation) or the labels (multi-label)
    title: str
    data: dict               # reader name and options, and the data's licence
    test_folder: str
    output: Output
    metric: str
    positive: str | None     # a two-class task's positive class (AUC, sensitivity, specificity)
    train: dict = field(default_factory=dict)   # recipe keys applied before --config and flags
    source: str = ""         # where the definition came from, for messages
    mask_values: tuple[int, ...] = ()   # segmentation: each class's value in the mask images

    @property
    def positive_index(self) -> int:
        return self.heads.index(self.positive) if self.positive else len(self.heads) - 1

    @property
    def gt_file(self) -> str:
        """The ground-truth CSV the scorer reads: the output file with _pre replaced by _gt."""
        stem = self.output.file.removesuffix(".csv")
        return (stem.removesuffix("_pre") if stem.endswith("_pre") else stem) + "_gt.csv"

    def neutral_rule(self) -> dict:
        return self.kind.neutral_rule(len(self.heads))

    def decide(self, probs, rule: dict | None = None):
        return self.kind.decide(probs, rule)

    def to_dict(self) -> dict:
        """The definition as a manifest stores it: every default filled in, no machine paths."""
        out = {"name": self.name, "title": self.title, "kind": self.kind.name,
               self.kind.heads_key: self.kind.heads_value(self)}
        if self.positive:
            out["positive"] = self.positive
        out.update({"data": {k: v for k, v in self.data.items() if k != "root"}, "test_folder": self.test_folder,
                    "output": {"file": self.output.file, "id": self.output.id, "id_header": self.output.id_header,
                               "columns": list(self.output.columns), "values": self.output.values,
                               **({"rle_order": self.output.rle_order} if self.output.values == "rle" else {})},
                    "metric": self.metric})
        return out


MAX_TASK_BYTES = 256 * 1024    # a task file is a page of YAML
MAX_YAML_NODES = 20_000        # values after aliases are expanded: a task file has a few hundred
MAX_YAML_DEPTH = 32


def read_bounded_yaml(path: Path):
    """The YAML document at ``path``, refused (TaskFileError) when it is too large, nested too deeply, or
    would expand to too many values through its aliases (a "billion laughs" file of a few hundred bytes
    expands to gigabytes in yaml.safe_load)."""
    try:
        if path.stat().st_size > MAX_TASK_BYTES:
            raise TaskFileError(f"{path}: {path.stat().st_size} bytes; a task file holds at most {MAX_TASK_BYTES}")
        text = path.read_text(encoding="utf-8")
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise TaskFileError(f"{path}: not valid YAML ({e})") from e
    except RecursionError:
        raise TaskFileError(f"{path}: nested too deeply for a task file") from None
    except OSError as e:
        raise TaskFileError(f"{path}: cannot read the task file ({e.strerror or e})") from e
    sizes: dict[int, int] = {}

    def expanded(n, depth: int) -> int:
        if depth > MAX_YAML_DEPTH:
            raise TaskFileError(f"{path}: nested deeper than {MAX_YAML_DEPTH} levels (or an alias refers to "
                                "itself); a task file is a few levels deep")
        if id(n) not in sizes:
            children = n.value if isinstance(n, yaml.SequenceNode) else \
                [x for pair in n.value for x in pair] if isinstance(n, yaml.MappingNode) else []
            sizes[id(n)] = 1 + sum(expanded(c, depth + 1) for c in children)
            if sizes[id(n)] > MAX_YAML_NODES:
                raise TaskFileError(f"{path}: expands to more than {MAX_YAML_NODES} values (through YAML aliases?); "
                                    "write the values out")
        return sizes[id(n)]

    if node is not None:
        expanded(node, 0)
    try:
        return yaml.safe_load(text)
    except yaml.constructor.ConstructorError as e:
        # A tag such as !!python/object/apply: safe_load runs nothing and refuses it; it is the user's file.
        raise TaskFileError(f"{path}: {e.problem_mark.line + 1 if e.problem_mark else '?'}: the YAML tag "
                            f"{(e.problem or '').split('tag ')[-1]} is not allowed in a task file; write plain "
                            "values") from None


def load_task(path: str | Path) -> Task:
    """Read and check a task file."""
    path = Path(path)
    if not path.is_file():
        raise TaskFileError(f"{path}: task file not found")
    raw = read_bounded_yaml(path)
    task = task_from_dict(raw, str(path))
    root = task.data.get("root")
    if root is not None:
        task = dataclasses.replace(task, data=dict(task.data, root=str((path.parent / root).resolve())))
    return task


def task_from_dict(raw, where: str, training: bool = True) -> Task:
    """Check a task definition (from a task file or a manifest) and fill in its defaults. A bundle's task
    (``training`` False) is not checked against the readers: a bundle never reads training data, and must
    load even where its data's reader has changed."""
    if not isinstance(raw, dict):
        raise TaskFileError(f"{where}: expected a mapping of task keys ({', '.join(TASK_KEYS)})")
    check_keys(raw, TASK_KEYS, where)
    name = _string(raw, "name", where)
    if not NAME.fullmatch(name):
        raise TaskFileError(f"{where}: name {name!r}: use letters, digits, '.', '_' and '-' (it names folders)")
    kind_name = _string(raw, "kind", where)
    known = kinds()
    if kind_name not in known:
        raise TaskFileError(f"{where}: kind {kind_name!r}: choose {', '.join(known)}")
    kind = known[kind_name]
    for other in known.values():
        if other.heads_key != kind.heads_key and other.heads_key in raw:
            raise TaskFileError(f"{where}: a {kind_name} task lists {kind.heads_key}:, not {other.heads_key}:")
    heads, mask_values = kind.read_heads(raw.get(kind.heads_key), where)
    positive = raw.get("positive")
    if positive is not None:
        if not kind.binary_positive or len(heads) != 2:
            raise TaskFileError(f"{where}: positive: applies to single-label tasks of two classes only")
        if positive not in heads:
            raise TaskFileError(f"{where}: positive {positive!r} is not one of the classes {list(heads)}")
    metric = raw.get("metric", kind.default_metric)
    if metric not in kind.metrics:
        raise TaskFileError(f"{where}: metric {metric!r}: a {kind_name} task is scored by {', '.join(kind.metrics)}")
    data = raw.get("data", {})
    if not isinstance(data, dict):
        raise TaskFileError(f"{where}: data: expected a mapping with reader: and its options")
    if data and training:
        try:
            check_reader_options(data, kind, heads)
        except ValueError as e:
            raise TaskFileError(f"{where}: data: {e}") from e
    test_folder = str(raw.get("test_folder", "."))
    parts = PurePosixPath(test_folder).parts
    if test_folder.startswith(("/", "\\")) or ".." in parts or "\\" in test_folder:
        raise TaskFileError(f"{where}: test_folder {test_folder!r} must be a folder inside the test folder, "
                            "like cla or . for the test folder itself")
    train = raw.get("train", {})
    if not isinstance(train, dict):
        raise TaskFileError(f"{where}: train: expected a mapping of recipe keys (python train.py --task FILE --show-config)")
    return Task(name=name, kind=kind, heads=heads, title=str(raw.get("title", name)), data=dict(data),
                test_folder=test_folder, output=_output(raw.get("output", {}), name, kind, heads, where),
                metric=metric, positive=positive, train=dict(train), source=where, mask_values=mask_values)


def _output(raw, name: str, kind, heads: tuple[str, ...], where: str) -> Output:
    if not isinstance(raw, dict):
        raise TaskFileError(f"{where}: output: expected a mapping ({', '.join(OUTPUT_KEYS)})")
    check_keys(raw, OUTPUT_KEYS, f"{where}: output")
    values = raw.get("values", kind.output_values[0])
    if not isinstance(values, str) or values not in kind.output_values:
        raise TaskFileError(f"{where}: output.values {values!r}: a {kind.name} task writes "
                            f"{' or '.join(kind.output_values)}")
    file = raw.get("file", kind.default_output_file(name, values))
    suffix = kind.output_suffix(values)
    folder = not suffix
    if not isinstance(file, str) or not NAME.fullmatch(file) or (file.endswith(".csv") if folder else not file.endswith(suffix)):
        raise TaskFileError(f"{where}: output.file {file!r}: " + (
            "a plain folder name (the masks are written into it)" if folder else f"a plain file name ending in {suffix}"))
    # Masks in a folder are named after their images: no id is written, so none is derived (nor warned about).
    id_mode = raw.get("id", "filename" if folder else "number")
    if not isinstance(id_mode, str) or id_mode not in ID_MODES:
        raise TaskFileError(f"{where}: output.id {id_mode!r}: number (the number in the file name) or filename")
    rle_order = raw.get("rle_order", "column")
    if rle_order not in RLE_ORDERS or "rle_order" in raw and values != "rle":
        raise TaskFileError(f"{where}: output.rle_order {rle_order!r}: column (Kaggle's column-major numbering) or "
                            "row, for values: rle only")
    default = kind.output_columns(heads, values)
    columns = raw.get("columns", default)
    if not isinstance(columns, list) or not all(isinstance(c, str) and c for c in columns):
        raise TaskFileError(f"{where}: output.columns: expected a list of column names")
    if len(columns) != len(default) or len(set(columns)) != len(columns):
        raise TaskFileError(f"{where}: output.columns: expected {len(default)} distinct name(s), like {default}")
    id_header = str(raw.get("id_header", ID_MODES[id_mode]))
    if id_header in columns:
        raise TaskFileError(f"{where}: output.id_header {id_header!r} is also a label column")
    return Output(file, id_mode, id_header, tuple(columns), values, rle_order)


def _string(raw: dict, key: str, where: str) -> str:
    value = raw.get(key)
    if not isinstance(value, str) or not value.strip():
        raise TaskFileError(f"{where}: {key}: required, a non-empty string")
    return value.strip()

