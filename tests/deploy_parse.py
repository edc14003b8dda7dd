"""Readers for the deploy files (Docker cannot run here): a Dockerfile parser, .dockerignore matching,
the compose file, and the set of distributions an install pulls in (from installed metadata)."""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE = ROOT / "deploy" / "compose.yaml"
TEMPLATE = ROOT / "deploy" / "templates" / "esdistill-index-template.json"


@dataclass
class Instruction:
    name: str
    args: str
    line: int

    def exec_form(self) -> list[str] | None:
        """The JSON-array form's list, or None for the shell form."""
        text = self.args.strip()
        if text.startswith("["):
            value = json.loads(text)
            assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
            return value
        return None

    def flags(self) -> tuple[dict[str, str], str]:
        """Leading ``--flag=value`` options and the rest."""
        out = {}
        rest = self.args.strip()
        while rest.startswith("--"):
            word, _, rest = rest.partition(" ")
            key, _, value = word[2:].partition("=")
            out[key] = value
            rest = rest.strip()
        return out, rest


#: packages the serving image must not carry (training only)
HEAVY = {"torch", "transformers", "sentence-transformers", "optimum", "optimum-onnx", "onnx", "accelerate"}


def stages(dockerfile: list[Instruction]) -> list[list[Instruction]]:
    """The instructions of each build stage (one list per ``FROM``)."""
    out: list[list[Instruction]] = []
    for ins in dockerfile:
        if ins.name == "FROM":
            out.append([])
        if out:
            out[-1].append(ins)
    return out


def parse_dockerfile(path: Path = DOCKERFILE) -> list[Instruction]:
    """Instructions with continuation lines joined; comments and blank lines dropped."""
    out: list[Instruction] = []
    buf, start = "", 0
    for no, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip()
        if not buf and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if buf and line.lstrip().startswith("#"):
            continue  # comment lines inside a continuation are skipped by Docker
        if not buf:
            start = no
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        name, _, args = buf.strip().partition(" ")
        out.append(Instruction(name.upper(), args.strip(), start))
        buf = ""
    assert not buf, f"the Dockerfile ends inside a continuation line (from line {start})"
    return out


def build_args(instructions: list[Instruction]) -> dict[str, str]:
    args = {}
    for ins in instructions:
        if ins.name == "ARG":
            key, _, default = ins.args.partition("=")
            args[key.strip()] = default.strip()
    return args


def env_of(instructions: list[Instruction]) -> dict[str, str]:
    """The ENV values (``KEY=VALUE`` pairs, possibly several per instruction)."""
    env = {}
    for ins in instructions:
        if ins.name == "ENV":
            for word in shlex.split(ins.args):
                key, sep, value = word.partition("=")
                assert sep, f"ENV on line {ins.line} uses the legacy 'ENV KEY VALUE' form"
                env[key] = value
    return env


def substitute(text: str, values: dict[str, str]) -> str:
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values.get(m.group(1) or m.group(2), m.group(0)), text)


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    pattern = pattern.strip().lstrip("/").rstrip("/")
    out, i = "", 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if i < len(pattern) and pattern[i] == "/":
                out = out[:-2] + "(?:.*/)?"
                i += 1
            continue
        out += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
        i += 1
    return re.compile(out + r"\Z")


def dockerignored(rel_path: str, ignore_file: Path = DOCKERIGNORE) -> bool:
    """Whether ``rel_path`` (relative to the build context) is left out of the context."""
    rules = []
    for line in ignore_file.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern_regex(line[1:] if negate else line)))
    parts = rel_path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for negate, rx in rules:
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


def requirement_closure(root: str, extras: tuple[str, ...]) -> set[str]:
    """Names (normalized) of every installed distribution that ``root[extras]`` pulls in."""

    def norm(name: str) -> str:
        return re.sub(r"[-_.]+", "-", name).lower()

    visited: set[tuple[str, tuple[str, ...]]] = set()
    names: set[str] = set()
    todo: list[tuple[str, tuple[str, ...]]] = [(root, extras)]
    while todo:
        name, wanted = todo.pop()
        if (norm(name), wanted) in visited:
            continue
        visited.add((norm(name), wanted))
        names.add(norm(name))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for text in dist.requires or []:
            req = Requirement(text)
            if any(req.marker is None or req.marker.evaluate({"extra": e}) for e in (*wanted, "")):
                todo.append((req.name, tuple(sorted(req.extras))))
    return names
