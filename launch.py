"""llmx launcher: compose a config with Hydra and hand it to llmx.run."""
import hydra
from omegaconf import DictConfig

from llmx import cli


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from llmx.run import run_job

    run_job(cfg)


if __name__ == "__main__":
    cli.install()  # schemas, one-line config errors, Slurm without -m
    main()
