"""A small Dockerfile reader and a .dockerignore matcher with Docker's rules
(last matching pattern wins, `!` re-includes, `**` spans directories, a
pattern that matches a directory excludes everything below it)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Instruction:
    cmd: str
    value: str
    stage: int
    line: int

    def exec_form(self) -> list[str] | None:
        v = self.value.strip()
        if v.startswith("["):
            return json.loads(v)
        return None


def parse(path: Path) -> list[Instruction]:
    out: list[Instruction] = []
    stage = -1
    pending = ""
    start = 0
    for no, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.rstrip()
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if pending and line.lstrip().startswith("#"):
            continue
        if not pending:
            start = no
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        cmd, _, value = full.partition(" ")
        cmd = cmd.upper()
        if cmd == "FROM":
            stage += 1
        out.append(Instruction(cmd, value.strip(), stage, start))
    return out


def stages(instrs: list[Instruction]) -> dict[int, list[Instruction]]:
    result: dict[int, list[Instruction]] = {}
    for i in instrs:
        result.setdefault(i.stage, []).append(i)
    return result


def _pattern_regex(pattern: str) -> re.Pattern:
    rx = ""
    i = 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            rx += "(?:.*/)?"
            i += 3
            continue
        if pattern.startswith("**", i):
            rx += ".*"
            i += 2
            continue
        if c == "*":
            rx += "[^/]*"
        elif c == "?":
            rx += "[^/]"
        else:
            rx += re.escape(c)
        i += 1
    return re.compile(rx + r"\Z")


class DockerIgnore:
    def __init__(self, path: Path):
        self.rules: list[tuple[bool, re.Pattern, str]] = []
        for raw in path.read_text().splitlines():
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            negate = line.startswith("!")
            pat = line[1:].strip() if negate else line
            pat = pat.strip("/")
            self.rules.append((negate, _pattern_regex(pat), pat))

    def excluded(self, rel: str) -> bool:
        parts = rel.strip("/").split("/")
        candidates = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        result = False
        for negate, rx, _ in self.rules:
            if any(rx.match(c) for c in candidates):
                result = not negate
        return result
