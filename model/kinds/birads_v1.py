"""The first bundles' manifests (birads-bundle/1, before task files) upgraded in memory: they were the
BI-RADS ``cla`` and ``fea`` classification tasks, whose definitions are now the project's task files. Kept
beside the classification kinds, not in the core: no other task ever wrote this format."""
from __future__ import annotations

from pathlib import Path

from ..errors import BundleError
from ..manifest import V2_FORMAT, register_upgrade
from ..task import load_task

V1_FORMAT = "birads-bundle/1"
TASKS = Path(__file__).resolve().parents[2] / "tasks"


@register_upgrade(V1_FORMAT)
def upgrade_v1(old: dict, path: Path) -> dict:
    """A birads-bundle/1 manifest as a harness-bundle/2 one (model.manifest upgrades it on from there)."""
    name = old.get("task")
    task_file = TASKS / f"birads-{name}.yaml"
    if name not in ("cla", "fea") or not task_file.is_file():
        raise BundleError(f"{path}: a {V1_FORMAT} manifest for task {name!r}, which this version cannot place; "
                          "re-export the bundle from its run folder (python train.py export RUN_DIR)")
    try:
        network = {"backbone": old["backbone"], "input_size": old["img_size"], "mean": old["mean"], "std": old["std"]}
        return {"format": V2_FORMAT, "task": load_task(task_file).to_dict(), "network": network,
                **{k: old[k] for k in ("decision", "prior", "folds")},
                **{k: old[k] for k in ("cv", "trained_on") if k in old}, "upgraded_from": V1_FORMAT}
    except KeyError as e:
        raise BundleError(f"{path}: {V1_FORMAT} manifest without {e}; re-export the bundle") from e
