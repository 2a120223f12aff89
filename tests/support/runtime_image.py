"""Installing what the runtime image holds, the way its Dockerfile does, without building an image.

No image can be built where the tests run, so `install_runtime_image` reads
runtime_image/Dockerfile's build stage, copies exactly the files it COPYs into a fresh source
tree and runs its one RUN step (runtime_image/install.sh) against a fresh virtualenv; and
`apply_derived_dockerfile` replays the steps of an image built FROM it (examples/custom-agents)
against that virtualenv, with the image's paths mapped to the test's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.runtime_services import REPO

IMAGE_VENV = "/opt/venv"

DOCKERFILE = REPO / "runtime_image" / "Dockerfile"


def build_stage() -> list[str]:
    """The instructions of the Dockerfile's first stage, continuation lines joined."""
    instructions = instructions_of(DOCKERFILE)
    stages = [i for i, line in enumerate(instructions) if line.startswith("FROM ")]
    assert len(stages) == 2, "expected a build stage and a runtime stage"
    return instructions[stages[0] + 1 : stages[1]]


def prepare_source(instructions: list[str], source: Path) -> None:
    """Copies into `source` what the build stage's COPY lines copy into its WORKDIR."""
    for line in instructions:
        if not line.startswith("COPY "):
            continue
        *sources, destination = shlex.split(line)[1:]
        assert not any(s.startswith("--") for s in sources), line
        target = source / destination
        for item in sources:
            origin = REPO / item
            if origin.is_dir():
                shutil.copytree(
                    origin, target, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
                )
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, target / origin.name)


def install_command(instructions: list[str], venv: Path, source: Path) -> list[str]:
    """The build stage's one RUN step, with the image's paths mapped to the test's."""
    (run,) = [line for line in instructions if line.startswith("RUN ")]
    workdir = next(line.split()[1] for line in instructions if line.startswith("WORKDIR "))
    argv = shlex.split(run.removeprefix("RUN "))
    assert argv[:2] == ["sh", "runtime_image/install.sh"], run
    mapping = {"/opt/venv": str(venv), workdir: str(source)}
    return [mapping.get(arg, arg) for arg in argv]


def instructions_of(dockerfile: Path) -> list[str]:
    """A Dockerfile's instructions, continuation lines joined, comments left out."""
    text = re.sub(r"\\\n\s*", " ", dockerfile.read_text())
    return [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def install_runtime_image(venv: Path, source: Path) -> subprocess.CompletedProcess[str]:
    """The runtime image's /opt/venv, built into `venv` as its Dockerfile builds it."""
    instructions = build_stage()
    prepare_source(instructions, source)
    return subprocess.run(
        install_command(instructions, venv, source),
        cwd=source,
        env={**os.environ, "PYTHON": sys.executable},
        capture_output=True,
        text=True,
        check=False,
    )


def apply_derived_dockerfile(dockerfile: Path, venv: Path, root: Path) -> None:
    """Replay an image built FROM the runtime image: its COPY steps (from the Dockerfile's
    directory) into `root`, its exec-form RUN steps with /opt/venv mapped to `venv`."""
    context = dockerfile.parent
    copied: dict[str, str] = {IMAGE_VENV: str(venv)}
    for line in instructions_of(dockerfile):
        word, _, rest = line.partition(" ")
        if word == "COPY":
            source, destination = shlex.split(rest)
            target = root / destination.lstrip("/")
            shutil.copytree(
                context / source,
                target,
                ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"),
            )
            copied[destination] = str(target)
        elif word == "RUN":
            argv = json.loads(rest)  # exec form only: no shell between the image and the step
            mapped = [_mapped(arg, copied) for arg in argv]
            subprocess.run(mapped, check=True, capture_output=True, text=True)
        else:
            assert word in ("ARG", "FROM", "USER"), f"{dockerfile}: no replay for {line}"


def _mapped(arg: str, paths: dict[str, str]) -> str:
    for image_path, local in paths.items():
        if arg == image_path or arg.startswith(image_path + "/"):
            return local + arg[len(image_path) :]
    return arg
