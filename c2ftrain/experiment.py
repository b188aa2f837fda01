"""An experiment: coarse-to-fine, its full-resolution baseline and the equal-FLOPs control, for one
or several seeds; one run directory, one report.

Layout: one seed trains into RUN_DIR/{c2f,baseline,equal_flops}; several seeds into
RUN_DIR/seed-S/{c2f,baseline,equal_flops}. Each training run writes outcome.json when it
finishes, so a resumed experiment skips what is done and continues the run it was in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from c2fdata.json_files import write_json_atomic
from c2ftrain.distributed import Dist, init_distributed
from c2ftrain.recipe import DataSpec, ModelSpec, Phase, Recipe, RecipeError, recipe_from_dict
from c2ftrain.report import build_report, write_report
from c2ftrain.run_lock import hold_run_dir
from c2ftrain.trainer import PhaseRecord, PhaseTrainer, RunOutcome, check_same_store, model_config

def default_run_dir(recipe: Recipe) -> Path:
    return Path("runs") / f"{recipe.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def seed_dir(run_dir: Path, seeds: list[int], seed: int) -> Path:
    """Where a seed's runs live: the run directory itself for a single seed, else seed-S/."""
    return Path(run_dir) if len(seeds) == 1 else Path(run_dir) / f"seed-{seed}"


def run_labels(recipe: Recipe, baseline: bool) -> tuple[str, ...]:
    """The runs an experiment trains per seed, in order (_one_seed trains these)."""
    if not baseline:
        return ("c2f",)
    return ("c2f", "baseline", "equal_flops") if recipe.baseline.equal_flops else ("c2f", "baseline")


def seed_list(recipe: Recipe, n_seeds: int) -> list[int]:
    """`n_seeds` consecutive seeds from the recipe's own."""
    if n_seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {n_seeds}")
    return [recipe.seed + i for i in range(n_seeds)]


def check_recipe_against_store(recipe: Recipe) -> str | None:
    """RecipeError (or StoreFormatError) now, not after a run directory exists, when a phase's C
    leaves less than one patch of the store's clips or a split is missing. Returns the store's
    fingerprint (its dataset, feature settings and every split's clip ids; None for a store
    written before fingerprints), which says whether two paths hold the same store."""
    from c2fdata.pipeline.splits import split_names
    from c2fdata.reader import StoreReader
    from c2fdata.store import open_store

    attrs = open_store(recipe.store).attrs
    have, trains_on = sorted(attrs["splits"]), attrs.get("train_split")
    data = recipe.data
    asked = [("data.eval_split", data.eval_split)] + [("data.extra_eval_splits", s) for s in data.extra_eval_splits]
    if data.train_split is not None:
        asked += [("data.train_split", s) for s in split_names(data.train_split)]
    for key, split in asked:
        if split not in have:  # named by the recipe key that asks for it, with the store's splits to choose from
            others = [s for s in have if s not in {a for _, a in asked} and (s != trains_on or key == "data.train_split")]
            if key == "data.extra_eval_splits":  # evaluated besides: leave it out
                kept = [s for s in data.extra_eval_splits if s in have]
                hint = f"; leave it out: --set '{key}={json.dumps(kept)}'"
            else:
                hint = f"; e.g. --set {key}={others[0]}" if others else ""
            raise RecipeError(f"{key} names the split {split!r}, which {recipe.store} does not have (its splits: "
                              f"{', '.join(have)}){hint}")
    reader = StoreReader(recipe.store, recipe.data.eval_split)
    crop = recipe.data.target_frames
    if crop is not None and crop > reader.target_frames:  # a store holds its clips up to its target length
        raise RecipeError(
            f"data.target_frames = {crop} is longer than the clips of {recipe.store} (at most "
            f"{reader.target_frames} frames: built with --target-frames {reader.target_frames}): every clip would "
            f"be zero-padded by {crop - reader.target_frames} frames or more, a model of padding. Set "
            f"data.target_frames to at most {reader.target_frames}, or build a store of longer clips into a new "
            f"--out (`c2fdata build ... --target-frames {crop}`)")
    cfg = model_config(recipe, reader)
    recipe.check_against(cfg.target_frames, cfg.n_mels, cfg.patch_size)
    return reader.attrs.get("fingerprint")


def comparison_notes(recipe: Recipe) -> list[str]:
    """A baseline given in the recipe whose length differs from coarse-to-fine's (its phases
    shrunk with --set, the [baseline] left as it was): the comparison is then of runs of
    different lengths, which the saving and the deltas do not say."""
    if not recipe.baseline.phases or any(p.epochs is None for p in recipe.phases + recipe.baseline.phases):
        return []
    c2f, base = sum(p.epochs for p in recipe.phases), sum(p.epochs for p in recipe.baseline.phases)
    if c2f == base:
        return []
    return [(f"the baseline trains {base} epochs, coarse-to-fine {c2f}: the comparison is of runs of different "
             f"lengths; set baseline.phases too (e.g. --set 'baseline.phases=[{{method=\"none\",factor=1,epochs={c2f}}}]')")]


CONFIG_REMEDY = "it is written by `c2ftrain run`: restore it, or train into a new directory"


def equal_flops_phases(recipe: Recipe, c2f: RunOutcome, d: Dist, device: str) -> tuple[Phase, ...]:
    """Full resolution for as many samples as fit in the FLOPs coarse-to-fine spent (counted
    with the control's own loader: an epoch's last batch may be partial)."""
    trainer = PhaseTrainer(recipe, recipe.baseline_phases, Path("."), "equal_flops", dist=d, device=device)
    try:
        return (Phase(method="none", factor=1, steps=trainer.steps_for_flops(c2f.flops)),)
    finally:
        trainer.close()


def run_experiment(recipe: Recipe, run_dir: Path, *, seeds: list[int] | None = None, resume: bool = False,
                   baseline: bool = True, on_event: Callable[[dict], None] | None = None,
                   device: str | None = None, shared_runs: Path | None = None) -> dict:
    """Train every run of the recipe for every seed into run_dir (skipping finished ones on
    resume) -> the report (also written as report.json and report.png).

    shared_runs: a folder where the baseline and equal-FLOPs runs live under a key of everything
    that decides them (a sweep's cells that differ only in coarse-to-fine settings share them)."""
    import torch

    fingerprint = check_recipe_against_store(recipe)  # before anything is written: no empty run directory on error
    run_dir = Path(run_dir)
    # what config.json records: a resumed directory keeps what it recorded (None if it was written
    # before fingerprints were), so that it never vouches for a store its finished seeds did not read
    recorded = _check_resumable(run_dir, recipe, fingerprint) if resume else fingerprint
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    d = init_distributed(dev)
    seeds = seeds or [recipe.seed]
    for note in comparison_notes(recipe) if baseline and on_event else ():
        on_event({"event": "note", "run": "experiment", "text": note})
    with hold_run_dir(run_dir, "c2ftrain run") if d.is_main else contextlib.nullcontext():  # one process at a time
        if d.is_main:
            config = {"recipe": recipe.to_dict(), "seeds": seeds, "baseline": baseline,
                      "store_fingerprint": recorded}
            if shared_runs is not None:  # a sweep's cell: its baselines live there, not in run_dir
                config["shared_runs"] = str(shared_runs)
            write_json_atomic(run_dir / "config.json", config)
        per_seed = []
        for seed in seeds:
            per_seed.append(_one_seed(dataclasses.replace(recipe, seed=seed), seed_dir(run_dir, seeds, seed), baseline,
                                      d, dev, resume, on_event, shared_runs, fingerprint))
        report = build_report(recipe, per_seed, seeds)
        if d.is_main:
            write_report(run_dir, report, per_seed)
    return report


def _one_seed(recipe: Recipe, out: Path, baseline: bool, d: Dist, device: str, resume: bool,
              on_event, shared_runs: Path | None, fingerprint: str | None = None) -> dict[str, RunOutcome]:
    def where(label: str, phases) -> Path:
        if shared_runs is None or label == "c2f":
            return out / label
        return Path(shared_runs) / f"{label}-seed{recipe.seed}-{run_key(recipe, phases)}"

    labels = run_labels(recipe, baseline)
    outcomes = {"c2f": _one_run(recipe, recipe.phases, where("c2f", recipe.phases), "c2f", d, device, resume,
                                on_event, fingerprint)}
    if "baseline" in labels:
        outcomes["baseline"] = _one_run(recipe, recipe.baseline_phases, where("baseline", recipe.baseline_phases),
                                        "baseline", d, device, resume or shared_runs is not None, on_event,
                                        fingerprint)
        if "equal_flops" in labels:
            phases = equal_flops_phases(recipe, outcomes["c2f"], d, device)
            outcomes["equal_flops"] = _one_run(recipe, phases, where("equal_flops", phases), "equal_flops", d,
                                               device, resume or shared_runs is not None, on_event, fingerprint)
    return outcomes


def run_key(recipe: Recipe, phases: tuple[Phase, ...]) -> str:
    """A short hash of everything that decides a training run: the recipe without its name,
    description, coarse-to-fine phases and cross-validation folds, the run's own phases and the
    seed. Settings that change nothing in this run are left out, so that runs trained before
    they existed keep their keys: the learning-rate scope of a one-phase run (one schedule
    either way), the mask value without masks, the mixup partner and domain without mixup, the
    FLOPs budget of a run without a budget phase (keyed as unset), whether coarse phases are
    also evaluated at full resolution (when they are, as before the setting, or the run has no
    coarse phase), and the fused optimizer update and torch.compile when off (the defaults, as
    before they existed). Settings that exist for Frame-Shift or for resampling between
    resolutions are keyed at their defaults in a run that has no use for them (Frame-Shift's
    random offset without an fshift phase at C > 1; the interpolation and antialiasing of
    positional embeddings and patch kernels in a run that trains at full resolution only from
    random weights), so that a sweep over them shares one baseline and control across its cells,
    and runs keyed before keep their keys."""
    d = recipe.to_dict()
    for key in ("name", "description", "phases", "baseline", "cv"):
        d.pop(key)
    if len(phases) == 1:
        d["optim"].pop("lr_scope")
    if not d["optim"]["fused"]:
        d["optim"].pop("fused")
    if d["model"]["compile"] == "none":
        d["model"].pop("compile")
    data = d["data"]
    if not (data["freq_mask_bins"] or data["time_mask_frames"]):
        data.pop("mask_value")
    if not data["mixup"]:
        data.pop("mixup_partner")
        data.pop("mixup_domain")
    if d["eval"]["full_resolution_during_coarse"] or not any(p.coarse for p in phases):
        d["eval"].pop("full_resolution_during_coarse")
    if not any(p.until == "budget" for p in phases):
        d["budget_full_epochs"] = None
    if not any(p.method == "fshift" and not p.full_resolution for p in phases):
        data["random_offset"] = DataSpec.random_offset
    if all(p.full_resolution for p in phases) and recipe.model.init == "none":
        d["model"]["interpolation"], d["model"]["antialias"] = ModelSpec.interpolation, ModelSpec.antialias
    d["run_phases"] = [asdict(p) for p in phases]
    return hashlib.sha1(json.dumps(d, sort_keys=True, default=str).encode()).hexdigest()[:12]


def _one_run(recipe, phases, out: Path, label: str, d: Dist, device: str, resume: bool, on_event,
             fingerprint: str | None = None) -> RunOutcome:
    """One training run into `out`, or its outcome.json where it has finished (with resume). A
    finished run records the store's fingerprint, so that one reused later (a sweep's shared
    baseline, kept across cells added later) is refused if the store was rebuilt since."""
    done = out / "outcome.json"
    if resume and done.is_file():
        found = read_json_object(done, "delete it, and --resume trains this run again from its last checkpoint")
        check_same_store(done, found.get("store_fingerprint"), fingerprint, recipe.store)
        return outcome_from_json(found)
    trainer = PhaseTrainer(recipe, tuple(phases), out, label, dist=d, device=device, on_event=on_event)
    if on_event:
        on_event({"event": "start", "run": label, "seed": recipe.seed, "phases": [p.label for p in phases]})
    outcome = trainer.run(resume=resume)
    if d.is_main:
        write_json_atomic(done, {**outcome_to_json(outcome), "store_fingerprint": fingerprint})
    return outcome


def read_json_object(path: Path, remedy: str) -> dict:
    """A JSON object this package wrote (config.json, outcome.json); a ValueError naming the file
    and `remedy` if it is cut short, not JSON, or not an object."""
    try:
        d = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}); {remedy}") from None
    if not isinstance(d, dict):  # a ValueError as the others: callers and the CLI catch that for bad files
        raise ValueError(f"{path} cannot be read (it holds a {type(d).__name__}, not an object); {remedy}")  # noqa: TRY004
    return d


def outcome_to_json(o: RunOutcome) -> dict:
    return {"label": o.label, "metric_name": o.metric_name, "metric": o.metric, "metrics": o.metrics,
            "records": [asdict(r) for r in o.records], "history": o.history}


def outcome_from_json(d: dict) -> RunOutcome:
    return RunOutcome(d["label"], d["metric_name"], d["metric"], d["metrics"],
                      [PhaseRecord(**r) for r in d["records"]], d["history"])


def _check_resumable(run_dir: Path, recipe: Recipe, fingerprint: str | None) -> str | None:
    """A resumed run must be the run it started as: the same recipe (the seed apart) and the
    store it started on. Its finished seeds and checkpoints were trained that way, and a report
    that mixed two recipes or two datasets would compare runs that were never alike (a sweep
    run again with another `--set` or an edited recipe or grid cell would otherwise take up its
    old coarse-to-fine runs beside baselines trained anew). Returns the fingerprint config.json
    recorded (None: written before fingerprints were), or this store's where there is no
    config.json yet (a sweep's new cell)."""
    from c2ftrain.recipe import recipe_differences

    cfg = run_dir / "config.json"
    if not cfg.is_file():
        return fingerprint
    config = read_json_object(cfg, CONFIG_REMEDY)
    was = config.get("store_fingerprint")
    check_same_store(cfg, was, fingerprint, recipe.store)  # --resume reads the store at the path config.json names
    try:
        started = recipe_from_dict(config["recipe"])
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{cfg} cannot be read ({type(err).__name__}: {err}); {CONFIG_REMEDY}") from None
    # the store is compared by fingerprint above (the same store may have moved, and with it
    # cv.store where it was filled in from the recipe's store)
    def moved(r: Recipe) -> Recipe:
        return dataclasses.replace(r, store="", cv=dataclasses.replace(r.cv, store="" if r.cv.store == r.store
                                                                         else r.cv.store))

    diff = recipe_differences(moved(started), moved(recipe))
    if diff:
        shown = "; ".join(diff[:6]) + (f"; and {len(diff) - 6} more" if len(diff) > 6 else "")
        how = ("run the sweep with the settings it was started with, or sweep into a new --out"
               if "shared_runs" in config else f"continue it as it was (`c2ftrain run --resume {run_dir}`), or "
               "train into a new directory")
        raise ValueError(f"{run_dir} was started with another recipe (started vs now: {shown}); its finished runs "
                         f"were trained with the one it recorded: {how}")
    return was


def load_run_config(run_dir: Path) -> tuple[Recipe, list[int], bool]:
    """The recipe, seeds and whether baselines were asked for, as an experiment directory was
    started (for --resume)."""
    cfg = Path(run_dir) / "config.json"
    if not cfg.is_file():
        raise FileNotFoundError(f"{cfg} not found: --resume needs a run directory made by `c2ftrain run`")
    d = read_json_object(cfg, CONFIG_REMEDY)
    try:
        recipe = recipe_from_dict(d["recipe"])
    except (ValueError, KeyError, TypeError) as err:  # RecipeError is a ValueError
        raise ValueError(f"{cfg} cannot be read ({type(err).__name__}: {err}); {CONFIG_REMEDY}") from None
    return recipe, d.get("seeds", [recipe.seed]), d.get("baseline", True)
