"""Prompt templates as data, and the in-context examples a rewrite prompt shows.

A template is a small TOML file (the bundled ones are in ``curate/generate/templates/``)::

    name = "fuse-v1"
    task = "fuse"                 # caption | fuse | rewrite | vec_caption | vec_fuse
    description = "..."
    system = "..."                # optional
    user = "... {raw} ... {synthetic} ..."
    stricter = "fuse-strict-v1"   # optional: what the knowledge guard retries with
    examples_format = "..."       # rewrite only: how one (input, output) pair is shown
    n_examples = 3                # rewrite only: how many pairs the stage picks

Why data and not code: a run records which prompt made each caption (template name,
:attr:`Template.sha256` of its file, and :func:`prompt_hash` of the rendered messages),
so a caption can be traced to the exact wording, and a user can try a new wording by
pointing a stage at a file without touching curate.

Placeholders are ``str.format`` fields (``{raw}``; a literal brace is doubled, ``{{``).
Each task allows a fixed set (:data:`TASK_FIELDS`) and a template must show the model its
input: a ``fuse`` template that never uses ``{synthetic}`` is refused at load, not
discovered after a million requests. Format specs, conversions, attribute or index
access and positional ``{}`` are refused too: values are captions, inserted verbatim.

Images (``caption`` and ``vec_caption``) are not a placeholder: :meth:`Template.render`
takes them as ``image=`` and puts them before the text as an OpenAI ``image_url`` part.
"""

from __future__ import annotations

import base64
import hashlib
import json
import random
import re
import string
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ..errors import ConfigError, InputError

#: Placeholders each task may use, in the order they are documented.
TASK_FIELDS: dict[str, tuple[str, ...]] = {
    "caption": (),
    "fuse": ("raw", "synthetic"),
    "rewrite": ("caption", "examples"),
    "vec_caption": (),
    "vec_fuse": ("raw", "vlm_caption"),
}

#: Placeholders a template of the task must use: the model has to see its input.
#: ``examples`` is required only when ``n_examples > 0`` (a zero-shot rewrite is allowed).
REQUIRED_FIELDS: dict[str, tuple[str, ...]] = {
    "caption": (),
    "fuse": ("raw", "synthetic"),
    "rewrite": ("caption",),
    "vec_caption": (),
    "vec_fuse": ("raw", "vlm_caption"),
}

#: Tasks whose prompt carries an image (a VLM call).
IMAGE_TASKS = frozenset({"caption", "vec_caption"})

#: Keys a template file may have.
VALID_KEYS = ("name", "task", "description", "system", "user", "stricter", "examples_format", "n_examples")

#: How an in-context pair is shown when a rewrite template does not say.
DEFAULT_EXAMPLES_FORMAT = "{input} => {output}"
DEFAULT_N_EXAMPLES = 3

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _bundled_root() -> Any:
    """The bundled templates folder (a plain data folder inside the package, so it ships in
    the wheel; read through importlib.resources, which also works from a zip)."""
    return resources.files("curate.generate").joinpath("templates")


@dataclass(frozen=True)
class Template:
    """One prompt template. ``path`` is None for a bundled template; ``sha256`` is of the
    file's bytes either way (bundled files are read through importlib.resources), so a
    copy of a bundled file loaded by path has the same hash, and the same bytes always
    give the same hash."""

    name: str
    task: str
    system: str | None
    user: str
    description: str
    stricter: str | None
    n_examples: int
    examples_format: str | None
    path: str | None
    sha256: str

    def fields(self) -> tuple[str, ...]:
        """The placeholders the system and user texts use, in order of first appearance."""
        out: list[str] = []
        for text in (self.system or "", self.user):
            for f in _placeholders(text, self.name):
                if f not in out:
                    out.append(f)
        return tuple(out)

    def format_examples(self, pairs: Sequence[tuple[str, str]]) -> str:
        """The in-context pairs as the ``{examples}`` text: one ``examples_format`` per
        pair, separated by a blank line when the format spans lines, else by a newline."""
        fmt = self.examples_format or DEFAULT_EXAMPLES_FORMAT
        sep = "\n\n" if "\n" in fmt else "\n"
        shown = []
        for i, pair in enumerate(pairs):
            if not (isinstance(pair, (tuple, list)) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
                raise InputError(f"template {self.name!r}: in-context example {i} is not an (input, output) pair of strings")
            shown.append(fmt.format(input=pair[0], output=pair[1]))
        return sep.join(shown)

    def render(self, *, image: bytes | str | None = None, image_mime: str | None = None,
               **values: Any) -> tuple[dict[str, Any], ...]:
        """OpenAI chat messages: the system message (if any), then the user message.

        ``values`` must name exactly the template's placeholders (a missing or unexpected
        one is a ConfigError naming both); each is a string, except ``examples``, which
        may also be a sequence of (input, output) pairs (see :meth:`format_examples`).
        ``image`` (bytes, or a ``data:``/``http(s):`` URL) is required for the image
        tasks and refused for the others; bytes become a base64 data URL whose MIME type
        is ``image_mime`` or sniffed from the magic bytes (JPEG when unknown: servers
        decode the bytes, not the label)."""
        wanted = self.fields()
        missing = [f for f in wanted if f not in values]
        if missing:
            raise ConfigError(f"template {self.name!r} needs field {missing[0]!r} (it uses {', '.join(wanted) or 'none'})")
        extra = [k for k in values if k not in wanted]
        if extra:
            raise ConfigError(f"template {self.name!r} has no field {extra[0]!r} (it uses {', '.join(wanted) or 'none'})")
        strings: dict[str, str] = {}
        for k, v in values.items():
            if k == "examples" and not isinstance(v, str):
                v = self.format_examples(v)
            if not isinstance(v, str):
                raise InputError(f"template {self.name!r}: field {k!r} must be a string, got {type(v).__name__}")
            strings[k] = v
        if self.task in IMAGE_TASKS and image is None:
            raise ConfigError(f"template {self.name!r} (task {self.task}) needs an image")
        if self.task not in IMAGE_TASKS and image is not None:
            raise ConfigError(f"template {self.name!r} (task {self.task}) takes no image")
        messages: list[dict[str, Any]] = []
        if self.system:
            messages.append({"role": "system", "content": self.system.format_map(strings)})
        text = self.user.format_map(strings)
        if image is None:
            messages.append({"role": "user", "content": text})
        else:
            url = image if isinstance(image, str) else _data_url(image, image_mime)
            messages.append({"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": text},
            ]})
        return tuple(messages)

    def instruction_texts(self) -> tuple[str, ...]:
        """The template's own wording without any input: the literal stretches between
        placeholders, each a separate text (so no word sequence spans an input). What
        :func:`curate.generate.checks.check_output` compares an output against to catch a
        model that repeats its instructions, when the rendered messages are not at hand."""
        out = []
        for text in (self.system, self.user):
            for literal, _, _, _ in string.Formatter().parse(text or ""):
                if literal.strip():
                    out.append(literal.strip())
        return tuple(out)


def _placeholders(text: str, where: str) -> list[str]:
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise ConfigError(f"template {where}: bad placeholder syntax ({e}); write a literal brace as {{{{ or }}}}") from None
    out = []
    for _, field, spec, conversion in parsed:
        if field is None:
            continue
        if field == "" or field.isdigit():
            raise ConfigError(f"template {where}: positional placeholder {{{field}}}; name it, e.g. {{raw}}")
        if not field.isidentifier():
            raise ConfigError(f"template {where}: placeholder {{{field}}} is not a plain name "
                              "(no attribute or index access)")
        if spec or conversion:
            raise ConfigError(f"template {where}: placeholder {{{field}}} has a format spec or conversion; "
                              "values are inserted verbatim")
        out.append(field)
    return out


_MAGIC = ((b"\xff\xd8\xff", "image/jpeg"), (b"\x89PNG\r\n\x1a\n", "image/png"), (b"GIF87a", "image/gif"),
          (b"GIF89a", "image/gif"), (b"BM", "image/bmp"))


def _sniff_mime(data: bytes) -> str:
    for magic, mime in _MAGIC:
        if data.startswith(magic):
            return mime
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return "image/jpeg"


def _data_url(data: bytes, mime: str | None) -> str:
    if not data:
        raise InputError("the image is empty (0 bytes)")
    return f"data:{mime or _sniff_mime(data)};base64,{base64.b64encode(data).decode('ascii')}"


def _parse(raw: bytes, where: str, path: str | None) -> Template:
    """A Template from a file's bytes; ``where`` names it in every error."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"template {where}: not UTF-8 (byte {e.start})") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"template {where}: not valid TOML: {str(e).splitlines()[0]}") from None
    unknown = sorted(set(data) - set(VALID_KEYS))
    if unknown:
        raise ConfigError(f"template {where}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(VALID_KEYS)}")

    def text_key(key: str, *, required: bool = False) -> str | None:
        value = data.get(key)
        if value is None:
            if required:
                raise ConfigError(f"template {where}: missing key {key!r}")
            return None
        if not isinstance(value, str):
            raise ConfigError(f"template {where}: {key!r} must be a string, got {type(value).__name__}")
        return value

    user = text_key("user", required=True)
    assert user is not None
    if not user.strip():
        raise ConfigError(f"template {where}: 'user' is empty")
    task = data.get("task")
    if task not in TASK_FIELDS:
        raise ConfigError(f"template {where}: unknown task {task!r}; tasks: {', '.join(TASK_FIELDS)}")
    name = text_key("name") or (Path(path).stem if path else "")
    if not _NAME_RE.match(name):
        raise ConfigError(f"template {where}: name {name!r} must be letters, digits, '.', '_' or '-'")
    system = text_key("system")
    stricter = text_key("stricter")
    if stricter == name:
        raise ConfigError(f"template {where}: 'stricter' names the template itself")
    examples_format = text_key("examples_format")
    n_examples = data.get("n_examples")
    if task == "rewrite":
        if n_examples is None:
            n_examples = DEFAULT_N_EXAMPLES
        if not isinstance(n_examples, int) or isinstance(n_examples, bool) or n_examples < 0:
            raise ConfigError(f"template {where}: 'n_examples' must be a whole number >= 0, got {n_examples!r}")
        examples_format = examples_format if examples_format is not None else DEFAULT_EXAMPLES_FORMAT
        used = _placeholders(examples_format, f"{where} (examples_format)")
        if sorted(set(used)) != ["input", "output"]:
            raise ConfigError(f"template {where}: 'examples_format' must use exactly {{input}} and {{output}}, "
                              f"got {', '.join('{' + u + '}' for u in used) or 'no placeholders'}")
    else:
        for key in ("n_examples", "examples_format"):
            if key in data:
                raise ConfigError(f"template {where}: {key!r} is for task rewrite only (this is {task})")
        n_examples = 0
    where_name = f"{where}"
    allowed = TASK_FIELDS[task]
    used_fields: list[str] = []
    for text_value in (system or "", user):
        used_fields += _placeholders(text_value, where_name)
    bad = [f for f in used_fields if f not in allowed]
    if bad:
        raise ConfigError(f"template {where}: placeholder {{{bad[0]}}} is not allowed for task {task}; "
                          f"allowed: {', '.join('{' + a + '}' for a in allowed) or 'none'}")
    required = list(REQUIRED_FIELDS[task]) + (["examples"] if task == "rewrite" and n_examples > 0 else [])
    absent = [f for f in required if f not in used_fields]
    if absent:
        raise ConfigError(f"template {where}: task {task} needs placeholder {{{absent[0]}}} (the model must see it)")
    if task == "rewrite" and n_examples == 0 and "examples" in used_fields:
        raise ConfigError(f"template {where}: uses {{examples}} but n_examples = 0")
    description = text_key("description") or ""
    return Template(name=name, task=task, system=system, user=user, description=description, stricter=stricter,
                    n_examples=n_examples, examples_format=examples_format if task == "rewrite" else None,
                    path=path, sha256=hashlib.sha256(raw).hexdigest())


def _looks_like_path(name_or_path: str) -> bool:
    return name_or_path.endswith(".toml") or "/" in name_or_path or "\\" in name_or_path


def _bundled_names() -> list[str]:
    root = _bundled_root()
    return sorted(p.name[:-len(".toml")] for p in root.iterdir() if p.name.endswith(".toml"))


def load_template(name_or_path: str) -> Template:
    """A bundled template by name (``"fuse-v1"``), or a template file: anything ending in
    ``.toml`` or containing a path separator is a path. Every problem is a one-line
    ConfigError naming the template."""
    if _looks_like_path(name_or_path):
        path = Path(name_or_path).expanduser()
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise ConfigError(f"template file {str(path)!r} does not exist") from None
        except OSError as e:
            raise ConfigError(f"template file {str(path)!r} cannot be read: {e.strerror or e}") from None
        return _parse(raw, repr(str(path)), str(path.resolve()))
    names = _bundled_names()
    if name_or_path not in names:
        raise ConfigError(f"unknown template {name_or_path!r}; bundled templates: {', '.join(names)} "
                          "(or pass the path of a .toml file)")
    raw = _bundled_root().joinpath(f"{name_or_path}.toml").read_bytes()
    t = _parse(raw, repr(name_or_path), None)
    if t.name != name_or_path:
        raise ConfigError(f"bundled template file {name_or_path}.toml is named {t.name!r}")
    return t


def load_stricter(template: Template) -> Template | None:
    """The template ``template.stricter`` names (None when it names none): a bundled name,
    or a path, relative to the template's own folder for a template loaded from a file.
    It must be of the same task."""
    if template.stricter is None:
        return None
    ref = template.stricter
    if _looks_like_path(ref) and template.path is not None and not Path(ref).expanduser().is_absolute():
        ref = str(Path(template.path).parent / ref)
    stricter = load_template(ref)
    if stricter.task != template.task:
        raise ConfigError(f"template {template.name!r}: its stricter template {stricter.name!r} is for task "
                          f"{stricter.task}, not {template.task}")
    return stricter


def bundled_templates() -> list[Template]:
    """Every template shipped with curate, sorted by name."""
    return [load_template(n) for n in _bundled_names()]


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _hashable_part(part: Any) -> Any:
    """A content part with an inline image replaced by the hash of its decoded bytes, so
    the hash is of the image and not of one base64 spelling of it (and the base64 text is
    not serialised a second time just to be hashed)."""
    if isinstance(part, Mapping) and part.get("type") == "image_url":
        image_url = part.get("image_url")
        url = image_url.get("url") if isinstance(image_url, Mapping) else image_url
        if isinstance(url, str) and url.startswith("data:") and "," in url:
            head, _, payload = url.partition(",")
            mime = head[len("data:"):].split(";")[0]
            data = base64.b64decode(payload) if head.endswith(";base64") else payload.encode("utf-8")
            rest = {k: v for k, v in image_url.items() if k != "url"} if isinstance(image_url, Mapping) else {}
            return {"type": "image_url", "image": {"mime": mime, "sha256": hashlib.sha256(data).hexdigest(), **rest}}
    return part


def prompt_hash(messages: Sequence[Mapping[str, Any]]) -> str:
    """sha256 (hex) of a canonical JSON of chat messages (sorted keys, no spaces, UTF-8);
    inline images count by the sha256 of their bytes. Equal prompts give equal hashes
    whichever process rendered them: the cache key of a generated caption."""
    canon = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list | tuple):
            content = [_hashable_part(p) for p in content]
        canon.append({**m, "content": content})
    return hashlib.sha256(_canonical(canon)).hexdigest()


# --- in-context examples (LaCLIP) -------------------------------------------------------

#: Accepted (input key, output key) names of a pair line: plain, and LaCLIP's own
#: (``meta_input_output_pairs.jsonl`` as extracted from LaCLIP's rewrite/utils.py).
EXAMPLE_KEYS = (("input", "output"), ("source_caption", "rewritten_caption"))


def read_examples(path: str | Path, *, strategy: str | None = None) -> list[tuple[str, str]]:
    """Every (input, output) pair of a JSONL file, in file order. Each non-blank line is an
    object with ``input``/``output`` or LaCLIP's ``source_caption``/``rewritten_caption``
    (other keys are ignored); ``strategy`` keeps only lines whose ``strategy`` equals it
    (LaCLIP's file mixes chatgpt, bard and human pairs, and LaCLIP prompts with one
    strategy's pairs at a time). A bad line is a one-line InputError with its number."""
    p = Path(path)
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise InputError(f"examples file {str(p)!r} does not exist") from None
    except OSError as e:
        raise InputError(f"examples file {str(p)!r} cannot be read: {e.strerror or e}") from None
    pairs: list[tuple[str, str]] = []
    seen_strategies: set[str] = set()
    for number, line in enumerate(raw.split(b"\n"), start=1):
        where = f"{p}:{number}"
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InputError(f"{where}: not UTF-8 (byte {e.start} of the line)") from None
        if not text.strip():
            continue
        try:
            obj = json.loads(text)
        except json.JSONDecodeError as e:
            raise InputError(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        keys = next((k for k in EXAMPLE_KEYS if k[0] in obj and k[1] in obj), None)
        if keys is None:
            names = " or ".join(f"{a!r}/{b!r}" for a, b in EXAMPLE_KEYS)
            raise InputError(f"{where}: needs keys {names}; found {', '.join(map(repr, obj)) or 'none'}")
        src, dst = obj[keys[0]], obj[keys[1]]
        if not (isinstance(src, str) and isinstance(dst, str)) or not src.strip() or not dst.strip():
            raise InputError(f"{where}: {keys[0]!r} and {keys[1]!r} must be non-empty strings")
        line_strategy = obj.get("strategy")
        if isinstance(line_strategy, str):
            seen_strategies.add(line_strategy)
        if strategy is not None and line_strategy != strategy:
            continue
        pairs.append((src.strip(), dst.strip()))
    if not pairs:
        known = f" (strategies in the file: {', '.join(sorted(seen_strategies))})" if seen_strategies else ""
        raise InputError(f"examples file {str(p)!r} has no pairs" + (f" of strategy {strategy!r}" if strategy else "") + known)
    return pairs


def choose_examples(pairs: Sequence[tuple[str, str]], n: int, seed: int | str) -> list[tuple[str, str]]:
    """``n`` distinct pairs drawn with ``random.Random(seed)``: the same pairs, seed and n
    give the same choice on every machine and Python process (a str seed is hashed with
    SHA-512 by ``random``, not with the salted ``hash``), so a per-caption seed such as
    the caption id gives each caption its own, reproducible examples."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ConfigError(f"the number of in-context examples must be a whole number >= 0, got {n!r}")
    if n > len(pairs):
        raise InputError(f"asked for {n} in-context examples but only {len(pairs)} pairs are available")
    return random.Random(seed).sample(list(pairs), n)


def load_examples(path: str | Path, n: int, seed: int | str, *, strategy: str | None = None) -> list[tuple[str, str]]:
    """:func:`read_examples` then :func:`choose_examples`. A stage rendering many prompts
    reads once and chooses per caption instead."""
    return choose_examples(read_examples(path, strategy=strategy), n, seed)


def examples_hash(pairs: Sequence[tuple[str, str]]) -> str:
    """sha256 (hex) of the pairs, in order, as canonical JSON: provenance for a rewrite."""
    return hashlib.sha256(_canonical([[a, b] for a, b in pairs])).hexdigest()
