"""Stage runners: one module per runner, found by name; nothing to register.

A stage is a module plus a `conf/stage/<name>.yaml` that names it in `runner:`
(`sft` means `llmx.stages.sft`; a dotted name such as `mypkg.mystage` is imported as
it is, so a stage can live outside llmx). The module holds

    Config            its config dataclass (the schema `/schema/stage/<runner>` for
                      built-in stages; an outside stage's config is checked against it)
    validate(cfg)     one-line ConfigErrors for impossible values (optional)
    prepare(cfg)      paddle-free reading and checking of inputs, before anything
                      heavy is imported; its result reaches run() as ctx.inputs (optional)
    run(cfg, ctx)     does the work; returns the summary metrics (a dict)

and imports paddle only inside its functions, so looking one up stays cheap.
"""
from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from types import ModuleType

from omegaconf import DictConfig, OmegaConf, open_dict

from llmx.schema import CONF_DIR, RunConfig, asset_path, validate_common
from llmx.errors import ConfigError


def module_name(runner: str) -> str:
    return runner if "." in runner else f"{__name__}.{runner}"


def stage_module(runner: str) -> ModuleType:
    try:
        module = importlib.import_module(module_name(runner))
    except ModuleNotFoundError as e:
        if e.name not in (module_name(runner), runner.split(".")[0]):
            raise
        raise ConfigError(f"stage.runner={runner!r}: no module {module_name(runner)} "
                          f"(built-in: {', '.join(builtin_stages())})") from None
    if not callable(getattr(module, "run", None)):
        raise ConfigError(f"stage.runner={runner!r}: {module.__name__} has no run(cfg, ctx)")
    return module


def builtin_stages() -> dict[str, ModuleType]:
    return {m.name: importlib.import_module(f"{__name__}.{m.name}")
            for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}


def register_configs(search_dirs: list[str] = ()) -> None:
    """Schemas and resolvers for composition: the run schema and every built-in stage's `Config`,
    plus the `Config` of each outside stage whose conf file sits in `search_dirs` (Hydra search path
    folders), as `/schema/stage/<file name>`; and the model group's following of the checkpoint
    (llmx.model_choice). Entry points call it before composing (importing llmx registers nothing)."""
    from hydra.core.config_store import ConfigStore

    from llmx import model_choice

    model_choice.install()

    if not OmegaConf.has_resolver("asset"):  # `${asset:demo/sft_train.jsonl}`: the bundled assets, wherever installed
        OmegaConf.register_new_resolver("asset", asset_path)
    if not OmegaConf.has_resolver("llmx_stages"):  # the stage list of `--help`
        OmegaConf.register_new_resolver("llmx_stages", help_text)
    cs = ConfigStore.instance()
    schema = OmegaConf.structured(RunConfig)
    # Hydra composes in struct mode, where only `+key=` may add a key; hyperparameter overrides are
    # free-form by nature, so this node takes new keys from a plain `model.overrides.X=...`; so does
    # model.rope_scaling (`model.rope_scaling={rope_type: yarn, factor: 4.0}`: its keys depend on the type).
    OmegaConf.set_struct(schema.model.overrides, False)
    OmegaConf.set_struct(schema.model.rope_scaling, False)
    cs.store(name="run_schema", node=schema)
    stages = dict(builtin_stages())
    for folder in search_dirs:
        for conf in sorted(Path(folder, "stage").glob("*.yaml")):
            runner = OmegaConf.load(conf).get("runner")
            if isinstance(runner, str) and "." in runner:
                try:
                    stages[conf.stem] = importlib.import_module(runner)
                except ImportError:  # reported by the run as an unknown stage.runner
                    continue
    for name, module in stages.items():
        if hasattr(module, "Config"):
            cs.store(group="schema/stage", name=name, node=module.Config)


def validate(cfg: DictConfig) -> None:
    """A whole run: what every run has (llmx.schema), then the stage's own rules. A stage from
    outside llmx has no registered schema: its config is checked against (and completed from) the
    module's `Config` here, as Hydra does for ours."""
    validate_common(cfg)
    module = stage_module(cfg.stage.runner)
    schema = getattr(module, "Config", None)
    if schema is not None and OmegaConf.get_type(cfg.stage) is not schema:
        try:
            typed = OmegaConf.merge(OmegaConf.structured(schema), cfg.stage)
        except Exception as ex:  # noqa: BLE001 - OmegaConf's key/type errors, as one line
            key = getattr(ex, "full_key", "") or "?"
            raise ConfigError(f"stage.{key}: {str(getattr(ex, 'msg', ex)).splitlines()[0]}") from None
        with open_dict(cfg):
            cfg.stage = typed
    if hasattr(module, "validate"):
        module.validate(cfg)
    return module


def describe(name: str, conf_dir: Path) -> str:
    """A stage option's one-line description: the first comment line of its conf file."""
    path = conf_dir / "stage" / f"{name}.yaml"
    for line in path.read_text().splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""


def help_text() -> str:
    """`--help`'s stage list (an OmegaConf resolver, so Hydra's own help renders it)."""
    names = sorted(p.stem for p in (CONF_DIR / "stage").glob("*.yaml"))
    width = max(map(len, names))
    return "\n".join(f"  {n:<{width}}  {describe(n, CONF_DIR)}" for n in names)
