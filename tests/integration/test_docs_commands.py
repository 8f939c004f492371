"""Every shell command shown in README.md and docs/*.md, and every `sdlab …` command named in them or in a
docstring, is one that works.

1. Each `sdlab` command (fenced or inline, docs or docstrings) is parsed by the real CLI parser: a wrong command
   name or flag fails here, even for commands that cannot run in a test (they need AWS or take minutes).
2. Each command of a fenced shell block runs, unless `RULES` says otherwise and why, against the session stack:
   `.venv/bin/` is this interpreter's environment; `$API`/`$KEY` are a gateway over the session stack's AWS
   resources that knows the runtimes of the repository's `sdlab.yaml` (the names the docs use), so documented
   requests are checked by the real handler; what they publish matches no queue, so nothing runs.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from sdlab import envvars
from sdlab.aws import AwsTarget
from sdlab.cli import parser
from sdlab.config import load_config
from sdlab.local.processes import free_port, http_ok, spawn, stop, wait_until
from sdlab.provision import StackResources
from sdlab.wiring import api_environment

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PROGRAMS = ("make", ".venv/bin/sdlab", "sdlab", ".venv/bin/python", "python", "curl", "kubectl", "helm", "eksctl")

# (pattern on the command, what to do, why). First match wins; a command that matches none runs as written.
RULES: list[tuple[str, str, str]] = [
    (r"^make ", "dry-run", "`make -n`: the target exists and expands; running it builds .venv or runs the suite (minutes)"),
    (r"^(eksctl|helm|kubectl) ", "skip", "needs an EKS cluster"),
    (r"^API=\$\(python -c .*aws-", "skip", "reads the files `sdlab aws deploy` writes (needs an AWS account)"),
    (r"sdlab aws (deploy|teardown)", "parse", "creates or deletes resources in an AWS account"),
    (r"sdlab model build .*--upload", "parse", "uploads to the deployed stack's bucket (AWS)"),
    (r"sdlab (up|down)\b", "parse", "the session stack is up through the same `sdlab.local.stack.up`; "
                                    "tests/integration/test_up_down.py runs the commands themselves"),
    (r"python -m agent\.bench", "help", "a benchmark (tens of seconds); `--help` proves the module and its entry point"),
    (r"\s(\.\.\.|…)\s", "parse", "`...` stands for arguments shown on an earlier line"),
    (r"sdlab model train\b", "parse", "trains the model (a GPU, minutes); it would also overwrite the bundled weights"),
    (r"sdlab model eval\b", "parse", "generates one image per held-out caption (200: over a minute on 2 cores)"),
    (r"sdlab tune\b", "parse", "a search over many simulations (~7 s a call); tests/sim/test_sim.py runs `sdlab tune`"),
    (r"python -m sdlab\.sim\.(calibrate|compare|bench)\b", "help",
     "runs real processes or many simulations (18-90 s); `--help` proves the module and its options"),
    (r"python -m sdlab\.sim\.prices\b", "help", "asks the AWS Pricing API (needs AWS credentials)"),
    (r"sdlab submit .*--wait", "session", "waits for a runtime: runs on the session stack, whose runtimes have test "
                                          "names (webui-a → rt-a)"),
]


@dataclass(frozen=True)
class Command:
    where: str  # file:line
    text: str
    fenced: bool


def _complete(line: str) -> bool:
    """False while a quote opened on `line` is not closed yet (the command goes on to the next line)."""
    try:
        shlex.split(line, comments=True)
        return True
    except ValueError:
        return False


def _fenced(path: Path) -> Iterator[Command]:
    text = path.read_text()
    for block in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        lang, body = block.group(1), block.group(2)
        if lang not in ("", "bash", "sh", "shell", "console"):
            continue
        first_line = text[: block.start(2)].count("\n") + 1
        lines = body.splitlines()
        n = 0
        while n < len(lines):
            start, line = n, lines[n]
            while n + 1 < len(lines) and (line.rstrip().endswith("\\") or not _complete(line)):
                n += 1
                line = line.rstrip()[:-1] + " " + lines[n].strip() if line.rstrip().endswith("\\") else line + "\n" + lines[n]
            n += 1
            stripped = line.strip().removeprefix("$ ")
            word = stripped.split(" ", 1)[0] if stripped else ""
            if word in PROGRAMS or word.startswith("API="):
                yield Command(f"{path.name}:{first_line + start}", stripped, True)
            elif lang and stripped and not stripped.startswith("#"):
                raise AssertionError(f"{path.name}:{first_line + start}: {stripped!r} is in a shell block but this "
                                     "test does not know its program; add it to PROGRAMS and RULES")


def _inline_sdlab(path: Path, text: str) -> Iterator[Command]:
    for m in re.finditer(r"`((?:\.venv/bin/)?(?:python -m )?sdlab [a-z][^`]*)`", text):
        where, mention = f"{path.name}:{text[: m.start()].count(chr(10)) + 1}", m.group(1)
        first, *alternatives = mention.split(" | ")  # `sdlab aws plan | deploy`: one command, several last words
        yield Command(where, first, False)
        for alternative in alternatives:
            yield Command(where, first.rsplit(" ", 1)[0] + " " + alternative, False)


def _docstrings() -> Iterator[tuple[Path, str]]:
    for folder in ("sdlab", "agent"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                    doc = ast.get_docstring(node)
                    if doc:
                        yield path, doc


def fenced_commands() -> list[Command]:
    return [c for path in DOCS for c in _fenced(path)]


def sdlab_commands() -> list[Command]:
    inline = [c for path in DOCS for c in _inline_sdlab(path, path.read_text())]
    inline += [c for path, doc in _docstrings() for c in _inline_sdlab(path, doc)]
    fenced = []
    for c in fenced_commands():
        for part in re.split(r"\s(?:&&|\|\||;|\|)\s", c.text):  # each command of a chain
            if re.match(r"(\.venv/bin/)?sdlab ", part.strip()):
                # `...` stands for arguments shown earlier: only the names that are there can be checked
                fenced.append(Command(c.where, part.strip(), fenced=not re.search(r"\s(\.\.\.|…)(\s|$)", part)))
    return fenced + inline


def _argv(text: str) -> list[str]:
    """The words after `sdlab`, comments and shell syntax dropped."""
    words = shlex.split(text.replace("python -m sdlab", "sdlab"), comments=True)
    words = words[1:]
    return [w for w in words if w not in ("...", "…")]


def _names_exist(argv: list[str]) -> None:
    """The subcommands, `--flags` and positional words of `argv` exist (an inline mention may leave out required
    arguments, but not add ones the command does not take)."""
    current: argparse.ArgumentParser = parser()
    value_expected = False
    for word in argv:
        subs = [a for a in current._actions if isinstance(a, argparse._SubParsersAction)]
        if value_expected:
            value_expected = False
        elif word.startswith("-"):
            flag = word.split("=")[0]
            assert flag in current._option_string_actions, f"{current.prog} has no option {flag}"
            value_expected = "=" not in word and current._option_string_actions[flag].nargs != 0
        elif subs:
            assert word in subs[0].choices, f"{current.prog} has no command {word!r}; it has {sorted(subs[0].choices)}"
            current = subs[0].choices[word]
        else:
            positionals = [a for a in current._actions if not a.option_strings]
            assert positionals, f"{current.prog} takes no argument {word!r}"


@pytest.mark.parametrize("command", sdlab_commands(), ids=lambda c: f"{c.where} {c.text}")
def test_docs_sdlab_command_parses(command: Command):
    argv = _argv(re.sub(r"[<>\[\]]", "", command.text))  # placeholders <x>, optional parts [--flag v]
    _names_exist(argv)
    if command.fenced:  # a whole command line: it must parse as written
        try:
            parser().parse_args(argv)
        except SystemExit as err:
            pytest.fail(f"{command.where}: `{command.text}` is not a valid sdlab command (exit {err.code})")


def _python_modules() -> list[tuple[str, str]]:
    found = []
    texts = [(p.name, p.read_text()) for p in DOCS] + [(p.name, doc) for p, doc in _docstrings()]
    for name, text in texts:
        found += [(name, m.group(1)) for m in re.finditer(r"`(?:\.venv/bin/)?python -m ([\w.]+)[^`]*`", text)]
    return sorted(set(found))


@pytest.mark.parametrize(("where", "module"), _python_modules())
def test_docs_python_m_modules_exist(where: str, module: str):
    """`python -m X` named anywhere in the docs or a docstring runs a module that exists and can be run."""
    spec = importlib.util.find_spec(module)
    assert spec is not None, f"{where}: `python -m {module}`: no such module"
    if spec.submodule_search_locations:  # a package runs its __main__
        assert importlib.util.find_spec(f"{module}.__main__") is not None, f"{where}: package {module} has no __main__"


def _rule(text: str) -> tuple[str, str]:
    for pattern, action, reason in RULES:
        if re.search(pattern, text):
            return action, reason
    return "run", ""


@pytest.fixture(scope="module")
def docs_api(stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """A gateway over the session stack's table, topics and bucket, configured with the repository's sdlab.yaml."""
    settings = load_config(ROOT / "sdlab.yaml")
    resources = StackResources(bucket=stack["bucket"], tasks_topic_arn=stack["tasks_topic_arn"],
                               results_topic_arn=stack["results_topic_arn"], table=stack["task_table"])
    target = AwsTarget(stack["region"], stack["aws_endpoint_url"])
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {**api_environment(settings, resources, target), envvars.API_KEYS: "docs-key", envvars.STATUS_BASE_URL: url}
    logs = tmp_path_factory.mktemp("docs-api")
    proc, popen = spawn("docs-gateway", ["-m", "sdlab.api.gateway", "--port", str(port)], env, logs / "gateway.log", url)
    try:
        wait_until(http_ok(f"{url}/_gateway/health"), popen, proc, 60)
        yield {"API": url, "KEY": "docs-key"}
    finally:
        stop([proc])


def _shell(text: str, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    bin_dir = str(Path(sys.executable).parent)
    text = re.sub(r"(?<![\w/])\.venv/bin/", bin_dir + "/", text)
    return subprocess.run(["bash", "-c", text], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_docs_shell_commands_run(stack, docs_api, tmp_path):
    """Each fenced command runs (or gets its rule's treatment) and exits 0; `curl` requests get a 2xx answer."""
    # a bare `sdlab` in the docs means the environment is activated: its bin folder first on PATH
    env = {**os.environ, **docs_api, envvars.CONFIG: str(ROOT / "sdlab.yaml"), envvars.HOME: stack["home"],
           "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    # commands run in a scratch folder (they write manifests/, outputs/, ...) holding the repository's config
    (tmp_path / "sdlab.yaml").symlink_to(ROOT / "sdlab.yaml")
    ran, treated, last_id = [], [], None
    for command in fenced_commands():
        action, reason = _rule(command.text)
        text = command.text
        if action == "skip":
            treated.append((command.where, command.text, reason))
            continue
        if action == "parse":  # test_docs_sdlab_command_parses covers it
            treated.append((command.where, command.text, reason))
            continue
        if action == "dry-run":
            text = text.replace("make ", "make -n ", 1)
        elif action == "help":
            text = text.split("#")[0].strip() + " --help"
        elif action == "session":
            text = text.replace("webui-a", "rt-a")
        if "<id>" in text:
            assert last_id, f"{command.where}: no task id from an earlier command"
            text = text.replace("<id>", last_id)
        if text.startswith("curl "):
            text = text.replace("curl -s ", "curl -s -w '\\n%{http_code}' ", 1)
        out = _shell(text, env, ROOT if action == "dry-run" else tmp_path)
        assert out.returncode == 0, (f"{command.where}: `{text}` exited {out.returncode}:\n"
                                     f"{out.stdout[-2000:]}{out.stderr[-2000:]}")
        if text.startswith("curl "):
            body, _, code = out.stdout.rpartition("\n")
            assert code.startswith("2"), f"{command.where}: `{command.text}` answered {code}: {body[:1000]}"
            answer = json.loads(body)
            last_id = answer.get("id", last_id)
        ran.append((command.where, action))
    print(f"{len(ran)} ran:", ran)
    print(f"{len(treated)} not run:", *(f"\n  {w}: {t}  ({r})" for w, t, r in treated))
    assert len(ran) >= 10
