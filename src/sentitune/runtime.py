"""What a run ran on: library versions, the lock, the git commit, sentitune's code digest, the device.
Imports only errors from the package, so every layer (training, export, compare, the CLI) can record
and check provenance.

Example:
    >>> versions = package_versions(("torch",))
    >>> sorted(versions)
    ['python', 'torch']
    >>> version_differences({"torch": "2.13.0"}, {"torch": "2.13.0"})
    []
    >>> version_differences({"torch": "2.13.0", "peft": "0.21.2"}, {"torch": "2.14.0", "peft": "0.21.2"})
    [('torch', '2.13.0', '2.14.0')]
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

from sentitune.errors import PrecisionError


TRAINING_PACKAGES = (
    "sentitune",
    "torch",
    "transformers",
    "peft",
    "tokenizers",
    "accelerate",
    "scikit-learn",
    "datasets",
    "numpy",
)
"""Recorded in every run folder."""

COMPARED_PACKAGES = ("torch", "transformers", "peft", "tokenizers", "scikit-learn")
"""Libraries whose version can move a result; one comparison holds them fixed (compare refuses a mix
unless told otherwise)."""

LOCK_FILE = Path(__file__).resolve().parents[2] / "requirements.lock"
"""The lock of a source checkout (setup.sh installs from it); absent in a plain `pip install`."""

PACKAGE_DIR = Path(__file__).resolve().parent
"""The directory of the sentitune package this process imported (a checkout's src/sentitune, or
site-packages/sentitune of an installed wheel)."""

CODE_DATA_FILES = ("configs/*.yaml", "suites/*.tsv")
"""Shipped data files that change what a run does (presets, the built-in suite), hashed with the code;
the report templates are not: they change how a result reads, not what it is."""

SENTITUNE_CODE = "sentitune code"
"""The name a run's code digest goes by beside the library versions (version_mix, compared_versions):
a change to sentitune's own code can move a result as much as a library upgrade."""


def _git_sha() -> str | None:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True, text=True, timeout=5
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


@functools.cache
def code_digest(package_dir: Path = PACKAGE_DIR) -> str:
    """sha256 (first 16 hex digits) over the sorted relative paths and bytes of every `*.py` file and
    CODE_DATA_FILES under `package_dir`: which sentitune code made a run.

    The scaffolding fingerprint covers the config, not the code, and the git SHA is missing from an
    installed wheel or a copied tree and blind to uncommitted edits; this digest is neither. It is kept
    out of the fingerprint on purpose (that would orphan every existing run folder): compare and the
    report treat it like a library version instead (version_mix). Cached per directory, so a process
    records the code it started with, not edits made to the files while it trains.

    Example:
        >>> len(code_digest()) == 16 and code_digest() == code_digest()
        True
    """
    package_dir = Path(package_dir)
    files = [*package_dir.rglob("*.py"), *(f for pattern in CODE_DATA_FILES for f in package_dir.glob(pattern))]
    digest = hashlib.sha256()
    for relative in sorted({f.relative_to(package_dir).as_posix() for f in files if f.is_file()}):
        # Each file as path, NUL, its own sha256: no two different trees feed the same byte stream.
        digest.update(relative.encode() + b"\0" + hashlib.sha256((package_dir / relative).read_bytes()).digest())
    return digest.hexdigest()[:16]


def compared_versions(provenance: dict[str, Any]) -> dict[str, str]:
    """A run's provenance as version_mix reads it: its library versions, plus its code digest under
    SENTITUNE_CODE when it recorded one (runs made before the digest existed have none)."""
    versions = provenance.get("versions")
    versions = dict(versions) if isinstance(versions, dict) else {}
    if provenance.get("code_digest"):
        versions[SENTITUNE_CODE] = str(provenance["code_digest"])
    return versions


def package_versions(names: tuple[str, ...] = TRAINING_PACKAGES) -> dict[str, str]:
    """Installed versions of `names` (those installed), plus Python's."""
    from importlib.metadata import PackageNotFoundError, version

    versions = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            pass
    return versions


def lock_digest(lock: Path = LOCK_FILE) -> str | None:
    """sha256 (first 16 hex digits) of the dependency lock this checkout installs from, or None."""
    try:
        return hashlib.sha256(lock.read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def version_differences(
    a: dict[str, str], b: dict[str, str], packages: tuple[str, ...] = COMPARED_PACKAGES
) -> list[tuple[str, str, str]]:
    """(package, version in a, version in b) for each of `packages` whose versions differ; a package
    missing on one side counts as "not installed"."""
    return [
        (name, a.get(name, "not installed"), b.get(name, "not installed"))
        for name in packages
        if a.get(name) != b.get(name)
    ]


def version_mix(
    versions_by_run: dict[str, dict[str, str]],
    packages: tuple[str, ...] = (*COMPARED_PACKAGES, SENTITUNE_CODE),
) -> list[dict[str, Any]]:
    """For each of `packages` with more than one version among the runs: which runs used which
    (a run that recorded none counts as "not recorded"). SENTITUNE_CODE (compared_versions puts a
    run's code digest there) is one of them: runs made by different sentitune code are a mix too; a
    run from before the digest existed counts as "not recorded" (unknown), which code_mix_line words
    as "N runs record no code digest" and compare does not refuse.

    Example:
        >>> version_mix({"a": {"torch": "2.13.0"}, "b": {"torch": "2.14.0"}}, ("torch",))
        [{'package': 'torch', 'versions': {'2.13.0': ['a'], '2.14.0': ['b']}}]
    """
    mix = []
    for name in packages:
        runs: dict[str, list[str]] = {}
        for run, versions in versions_by_run.items():
            runs.setdefault(str(versions.get(name, "not recorded")), []).append(run)
        if len(runs) > 1:
            mix.append({"package": name, "versions": runs})
    return mix


def code_mix_line(entry: dict[str, Any]) -> str:
    """A SENTITUNE_CODE entry of version_mix in words, with how many runs each digest made, e.g.
    "2 runs by sentitune code 1a2b3c4d5e6f7a8b (full-s1, lora-s1); 1 run records no code digest (tfidf-s1)".

    Example:
        >>> code_mix_line({"package": SENTITUNE_CODE, "versions": {"1a2b": ["a", "b"], "not recorded": ["c"]}})
        '2 runs by sentitune code 1a2b (a, b); 1 run records no code digest (c)'
    """
    parts = []
    for digest, runs in entry["versions"].items():
        count = f"{len(runs)} run{'s' if len(runs) != 1 else ''}"
        if digest == "not recorded":
            parts.append(f"{count} record{'s' if len(runs) == 1 else ''} no code digest ({', '.join(runs)})")
        else:
            parts.append(f"{count} by sentitune code {digest} ({', '.join(runs)})")
    return "; ".join(parts)


# ---- paths as a record names them ---------------------------------------------------------------

DATA_DIR_ENV = "SENTITUNE_DATA_DIR"
"""Environment variable: the folder the named datasets (sst2, imdb) are read from."""

SITE_PACKAGES = "<site-packages>"
"""What a recorded path inside an environment's site-packages (or dist-packages) folder starts with."""

_ABSOLUTE_PATH = re.compile(r"(?<![^\s:,;=(\[\"'])/(?!/)[^\s:,;()\[\]\"']*")
"""An absolute path inside a longer string: a `/` at the start or after a separator (space, `:`, `,`,
`;`, `=`, an opening bracket or quote), running to the next one. A hub id (`owner/name`) has its `/`
after a letter and a URL (`https://host/x`) has `//`, so neither matches; a path holding one of the
separators is cut there and only its first piece is rewritten."""


def _portable(path: str, places: list[tuple[Path, str]]) -> str:
    normal = Path(os.path.normpath(path))
    for name in ("site-packages", "dist-packages"):
        if name in normal.parts:
            index = len(normal.parts) - 1 - normal.parts[::-1].index(name)  # the innermost one
            return "/".join((SITE_PACKAGES, *normal.parts[index + 1 :]))
    for folder, label in places:
        if normal.is_relative_to(folder):
            rest = normal.relative_to(folder).as_posix()
            return rest if not label else label if rest == "." else f"{label}/{rest}"
    return path


def portable_path(text: str, *, cwd: str | None = None, home: str | None = None, data_dir: str | None = None) -> str:
    """`text` with every absolute path in it written as it reads on any machine, for a run record
    (metrics.json, provenance, a manifest), never for loading: a path inside site-packages or
    dist-packages -> `<site-packages>/rest`; inside $SENTITUNE_DATA_DIR (as given or resolved) ->
    `$SENTITUNE_DATA_DIR/rest`; inside the working directory -> relative to it; inside the home folder
    -> `~/rest`; anything else unchanged, and so is everything around the paths (`local:`, a hub id, a
    description). `cwd`, `home` and `data_dir` default to this process's.

    Example:
        >>> where = {"cwd": "/srv/proj", "home": "/home/ann", "data_dir": "/data/sets"}
        >>> portable_path("/srv/proj/.venv/lib/python3.11/site-packages/gt_minilm/model", **where)
        '<site-packages>/gt_minilm/model'
        >>> portable_path("/usr/lib/python3/dist-packages/torch/__init__.py", **where)
        '<site-packages>/torch/__init__.py'
        >>> portable_path("local:/data/sets/sst2/train.tsv,/data/sets/sst2/dev.tsv", **where)
        'local:$SENTITUNE_DATA_DIR/sst2/train.tsv,$SENTITUNE_DATA_DIR/sst2/dev.tsv'
        >>> portable_path("/srv/proj/runs/full-s1", **where)
        'runs/full-s1'
        >>> portable_path("/home/ann/corpus.txt:text", **where)
        '~/corpus.txt:text'
        >>> portable_path("GLUE SST-2 TSV (/data/sets/sst2/train.tsv)", **where)
        'GLUE SST-2 TSV ($SENTITUNE_DATA_DIR/sst2/train.tsv)'
        >>> portable_path("python -m sentitune train --output-dir /srv/proj/runs/a", **where)
        'python -m sentitune train --output-dir runs/a'
        >>> [portable_path(s, **where) for s in ("bert-base-uncased", "hub:stanfordnlp/imdb", "/opt/m")]
        ['bert-base-uncased', 'hub:stanfordnlp/imdb', '/opt/m']
        >>> portable_path("https://huggingface.co/x/y", **where)
        'https://huggingface.co/x/y'
    """
    data_dir = os.environ.get(DATA_DIR_ENV) if data_dir is None else data_dir
    places: list[tuple[Path, str]] = []
    if data_dir:
        given = Path(os.path.abspath(os.path.expanduser(data_dir)))
        places += [(given, f"${DATA_DIR_ENV}"), (given.resolve(), f"${DATA_DIR_ENV}")]
    for folder, label in ((cwd or os.getcwd(), ""), (home or os.path.expanduser("~"), "~")):
        folder = Path(os.path.abspath(folder))
        if len(folder.parts) > 1:  # under `/` is every path: nothing to shorten
            places.append((folder, label))
    return _ABSOLUTE_PATH.sub(lambda match: _portable(match.group(), places), text)


def device_description() -> dict[str, Any]:
    import torch

    if torch.cuda.is_available():
        return {
            "device": "cuda",
            "device_name": torch.cuda.get_device_name(0),
            "device_count": torch.cuda.device_count(),
        }
    return {"device": "cpu", "device_name": platform.processor() or platform.machine(), "cpu_count": os.cpu_count()}


def provenance() -> dict[str, Any]:
    """Everything a run folder records about where and with what it ran."""
    import torch

    return {
        "git_sha": _git_sha(),
        "code_digest": code_digest(),
        "versions": package_versions(),
        "lock_sha256": lock_digest(),
        **device_description(),
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu_info(),
        "hostname": platform.node(),
        "command": portable_path(" ".join(sys.argv)),
    }


# ---- the CPU and the precision it runs best in -----------------------------------------------

ISA_FEATURES = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
"""The /proc/cpuinfo flags that decide what runs fast: VNNI for int8, AVX-512 BF16 or AMX for bf16."""

CPU_BF16_OVERRIDE = "SENTITUNE_CPU_BF16"
"""Environment variable: `0` treats the CPU as having no native bf16 (runs stay fp32, and stay
comparable with fp32 runs made elsewhere), `1` as having it; unset = detect."""


def cpu_info(cpuinfo: str | None = None) -> dict[str, Any]:
    """The CPU model, its core count and which of ISA_FEATURES it has (read from /proc/cpuinfo on
    Linux; elsewhere only what torch reports)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            cpuinfo = ""
    model, flags = platform.processor() or platform.machine(), set()
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            model = value.strip()
        elif key.strip() == "flags":
            flags |= set(value.split())
    info = {"cpu_model": model, "cpu_cores": os.cpu_count(), "isa": [f for f in ISA_FEATURES if f in flags]}
    try:
        import torch

        info["torch_cpu_capability"] = torch.backends.cpu.get_cpu_capability()
    except Exception:  # torch missing or too old: the flags above still say what the CPU has
        pass
    return info


def cpu_has_native_bf16(info: dict[str, Any] | None = None) -> bool:
    """True when bf16 matrix products run in hardware (AVX-512 BF16 or AMX), where autocast pays;
    elsewhere bf16 is emulated and slower than fp32. SENTITUNE_CPU_BF16=0/1 overrides the check."""
    override = os.environ.get(CPU_BF16_OVERRIDE, "").strip()
    if override in ("0", "1"):
        return override == "1"
    isa = set((info or cpu_info())["isa"])
    return bool(isa & {"avx512_bf16", "amx_bf16"})


def machine_line(info: dict[str, Any] | None = None) -> str:
    """One line for the head of every benchmark: CPU model, cores and ISA flags."""
    info = info or cpu_info()
    return (
        f"machine: {info['cpu_model']}, {info['cpu_cores']} cores, ISA {' '.join(info['isa']) or 'none of interest'}"
        f" (torch CPU capability {info.get('torch_cpu_capability', 'unknown')})"
    )


def choose_precision(
    choice: str,
    *,
    cuda: bool,
    cuda_bf16: bool,
    cpu_bf16: bool,
    field: str = "train.precision",
    cpu_model: str = "this CPU",
) -> str:
    """The precision a run uses: `auto` picks bf16 on GPUs that support it (fp16 on other GPUs), bf16
    autocast on CPUs with native bf16, and fp32 elsewhere. An explicit choice the hardware can't run
    well is refused rather than emulated slowly.

    Example:
        >>> choose_precision("auto", cuda=False, cuda_bf16=False, cpu_bf16=True)
        'bf16'
        >>> choose_precision("auto", cuda=False, cuda_bf16=False, cpu_bf16=False)
        'fp32'
    """
    if choice == "auto":
        if cuda:
            return "bf16" if cuda_bf16 else "fp16"
        return "bf16" if cpu_bf16 else "fp32"
    if cuda or choice == "fp32":
        return choice
    if choice == "fp16":
        raise PrecisionError(f"{field}=fp16 needs a CUDA GPU; use fp32 or auto on CPU")
    if not cpu_bf16:
        raise PrecisionError(
            f"{field}=bf16: {cpu_model} has no native bf16 (neither avx512_bf16 nor amx_bf16), so bf16 would run "
            "as a slow emulation; use fp32 or auto (which picks bf16 on CPUs that have it)"
        )
    return choice


def resolve_precision(choice: str, device: str | None = None, field: str = "train.precision") -> str:
    """choose_precision with this machine's facts; `device="cpu"` ignores any GPU."""
    import torch

    cuda = torch.cuda.is_available() and device != "cpu"
    info = cpu_info()
    return choose_precision(
        choice,
        cuda=cuda,
        cuda_bf16=cuda and torch.cuda.is_bf16_supported(),
        cpu_bf16=cpu_has_native_bf16(info),
        field=field,
        cpu_model=info["cpu_model"],
    )
