"""Concept discovery (CFT §3.1; docs/paper.md §1): per class, short visual part-level concepts ("long beak",
"wings") proposed label-free — by the world's field guide, a local LLM, WordNet part meronyms or an existing
bank — filtered as in Label-free CBM (Oikarinen et al. 2023) and stored as a validated JSON bank named by
its content hash."""

from __future__ import annotations

import datetime
import difflib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import pandas as pd

from cftlib.core import config, hub, launch
from cftlib.core.io import atomic_path, json_sha256, read_json

SCHEMA = "cft-concept-bank/1"
_BANK_NAME = re.compile(r"^bank-([0-9a-f]{12})\.json$")


class ConceptError(ValueError):
    """A bank, proposer answer or class list that cannot be used; the message names the class and field."""


@dataclass(frozen=True)
class ClassInfo:
    """One class as a proposer sees it. `name` may list synonyms after commas ("tench, Tinca tinca")."""
    label: int
    name: str
    description: str = ""  # the world's field-guide sentence
    wnid: str = ""  # WordNet noun synset id ("n01530575"): ImageNet's class ids

    @property
    def synonyms(self) -> list[str]:
        return [s.strip() for s in self.name.split(",") if s.strip()]


def classes_from_guide(guide: list[dict]) -> list[ClassInfo]:
    """Classes of the world from its field guide (`world.load_guide`)."""
    return [ClassInfo(g["label"], g["name"], g["description"]) for g in guide]


def classes_from_folder(class_dirs: list[str], names_file: str | Path | None = None) -> list[ClassInfo]:
    """Classes of an image folder: one per class folder (sorted); `names_file` is an optional JSON
    {folder: "name, synonym, ..."}. A folder that looks like a WordNet id (n01530575) is used as one."""
    names = {}
    if names_file:
        path = Path(names_file)
        if not path.is_file():
            raise ConceptError(f"{path}: class-names file not found (concepts.class_names)")
        names = read_json(path, fix="save it as UTF-8 JSON {folder: \"name, synonym, ...\"} (concepts.class_names)")
    return [ClassInfo(i, str(names.get(d, d.replace("_", " "))), wnid=d if re.fullmatch(r"n\d{8}", d) else "")
            for i, d in enumerate(class_dirs)]


def classes_from_imagenet(class_dirs: list[str]) -> list[ClassInfo]:
    """Classes of ImageNet's wnid folders, named by their WordNet lemmas and described by their glosses
    (the lists timm ships), so a proposer sees "tench, Tinca tinca" and not n01440764."""

    info = resources.files("timm") / "data" / "_info"
    lemma, gloss = ({w: t.strip() for w, t in (line.split("\t", 1) for line in (info / f).read_text().splitlines())}
                    for f in ("imagenet_synset_to_lemma.txt", "imagenet_synset_to_definition.txt"))
    unknown = [d for d in class_dirs if d not in lemma]
    if unknown:
        raise ConceptError(f"concepts.image_dir: {', '.join(unknown[:5])} are not WordNet ids of ImageNet classes")
    return [ClassInfo(i, lemma[d], gloss.get(d, ""), wnid=d) for i, d in enumerate(class_dirs)]


# ----------------------------------------------------------------------------- bank schema

def _err(where: str, msg: str):
    raise ConceptError(f"{where}: {msg}")


def validate(bank: dict, where: str = "bank") -> dict:
    """Check a bank against the schema and return it normalised (every concept with a float weight).

    {"schema": "cft-concept-bank/1",
     "header": {"proposer", "model", "prompt", "prompt_sha256", "params", "date"},
     "classes": [{"label": 0, "name": "...", "concepts": [{"text": "long beak", "weight": 1.0, "source": "..."}]}]}
    Labels are 0..n-1 in order; every class has at least one concept; weights are positive (docs/paper.md §2.1).
    """
    if not isinstance(bank, dict):
        _err(where, f"must be a JSON object, got {type(bank).__name__}")
    if set(bank) != {"schema", "header", "classes"}:
        _err(where, f"keys must be schema, header, classes; got {', '.join(sorted(bank))}")
    if bank["schema"] != SCHEMA:
        _err(f"{where}: schema", f"{bank['schema']!r} is not {SCHEMA!r}")
    header = bank["header"]
    keys = {"proposer", "model", "prompt", "prompt_sha256", "params", "date"}
    if not isinstance(header, dict) or set(header) != keys:
        _err(f"{where}: header", f"must have exactly the keys {', '.join(sorted(keys))}")
    if not isinstance(header["proposer"], str) or not header["proposer"]:
        _err(f"{where}: header.proposer", "must be a non-empty string")
    for key in ("model", "prompt", "date"):
        if header[key] is not None and not isinstance(header[key], str):
            _err(f"{where}: header.{key}", "must be a string or null")
    if header["prompt"] is not None and header["prompt_sha256"] != sha256(header["prompt"]):
        _err(f"{where}: header.prompt_sha256", "does not match the prompt")
    if header["date"] is not None:
        try:
            datetime.date.fromisoformat(header["date"][:10])
        except ValueError:
            _err(f"{where}: header.date", f"{header['date']!r} is not an ISO date")
    if not isinstance(header["params"], dict):
        _err(f"{where}: header.params", "must be an object")
    classes = bank["classes"]
    if not isinstance(classes, list) or not classes:
        _err(f"{where}: classes", "must be a non-empty list")
    out = []
    for i, c in enumerate(classes):
        at = f"{where}: classes[{i}]"
        if not isinstance(c, dict) or set(c) != {"label", "name", "concepts"}:
            _err(at, "must be an object with keys label, name, concepts")
        at = f"{where}: class {c['label']!r} ({c['name']!r})"
        if type(c["label"]) is not int or c["label"] != i:
            _err(f"{at}: label", f"labels must be 0..{len(classes) - 1} in order; found {c['label']!r} at {i}")
        if not isinstance(c["name"], str) or not c["name"].strip():
            _err(f"{at}: name", "must be a non-empty string")
        if not isinstance(c["concepts"], list) or not c["concepts"]:
            _err(f"{at}: concepts", "must be a non-empty list")
        concepts = []
        for j, k in enumerate(c["concepts"]):
            cat = f"{at}: concepts[{j}]"
            if not isinstance(k, dict) or "text" not in k or not set(k) <= {"text", "weight", "source"}:
                _err(cat, f"must be an object with text and optional weight, source; got {k!r}")
            if not isinstance(k["text"], str) or not k["text"].strip() or k["text"] != k["text"].strip():
                _err(f"{cat}.text", f"must be a non-empty, stripped string; got {k['text']!r}")
            w = k.get("weight", 1.0)
            if type(w) not in (int, float) or not math.isfinite(w) or w <= 0:
                _err(f"{cat}.weight", f"must be a positive number; got {w!r}")
            if not isinstance(k.get("source", ""), str):
                _err(f"{cat}.source", "must be a string")
            concepts.append({"text": k["text"], "weight": float(w), "source": k.get("source", "")})
        texts = [k["text"] for k in concepts]
        if len(set(texts)) != len(texts):
            _err(f"{at}: concepts", f"duplicate concept text in {texts}")
        out.append({"label": i, "name": c["name"], "concepts": concepts})
    return {"schema": SCHEMA, "header": dict(header), "classes": out}


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def content_hash(bank: dict) -> str:
    """First 12 hex digits of the sha256 of the bank's canonical JSON: the bank's name (like the official
    code's `bank_<hash>` output folders, docs/paper.md §1.1)."""
    return json_sha256(bank, separators=(",", ":"), ensure_ascii=False)[:12]


def save(bank: dict, out_dir: str | Path, beside: dict[str, object] | None = None) -> Path:
    """Write the validated bank as `<out_dir>/bank-<hash>.json`, and each `beside` {name: JSON data} as
    `<out_dir>/<name>.json` (the concept validation's rates); the folder is replaced atomically."""
    bank = validate(bank)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        (tmp / f"bank-{content_hash(bank)}.json").write_text(json.dumps(bank, indent=2, sort_keys=True) + "\n")
        for name, data in (beside or {}).items():
            (tmp / f"{name}.json").write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return Path(out_dir) / f"bank-{content_hash(bank)}.json"


def load(path: str | Path) -> dict:
    """Read and validate a bank: a file, or a stage folder holding exactly one `bank-<hash>.json`.
    A file named by a hash must still have that hash (an edited bank gets a new name)."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if _BANK_NAME.match(p.name))
        if len(found) != 1:
            raise ConceptError(f"{path}: expected one bank-<hash>.json, found {len(found)}; run the concepts stage")
        path = found[0]
    if not path.is_file():
        raise ConceptError(f"{path}: concept bank not found; run the concepts stage")
    bank = validate(read_json(path, fix=BANK_FIX), str(path))
    m = _BANK_NAME.match(path.name)
    if m and m.group(1) != content_hash(bank):
        raise ConceptError(f"{path}: content hash is {content_hash(bank)}, not the {m.group(1)} in its name "
                           "(edited after it was written?); save it again with concepts.save")
    return bank


def table(bank: dict):
    """The bank as a pandas DataFrame: one row per class, its concepts joined."""
    return pd.DataFrame([{"label": c["label"], "name": c["name"], "n": len(c["concepts"]),
                          "concepts": "; ".join(f"{k['text']}" + (f" ({k['weight']:g})" if k["weight"] != 1 else "")
                                                for k in c["concepts"])} for c in bank["classes"]]).set_index("label")


# ----------------------------------------------------------------------------- filters (Label-free CBM)

def normalise(text: str) -> str:
    """Lowercase words: quotes, bullets, numbering and trailing punctuation removed."""
    text = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", str(text))
    text = re.sub(r"[\"'`]", "", text.lower())
    text = re.sub(r"[^a-z0-9\- ]+", " ", text)
    return " ".join(text.split()).strip("- ")


def similarity(a: str, b: str) -> float:
    """Character-level similarity of normalised strings (difflib ratio; singular/plural agree). Label-free
    CBM uses sentence embeddings (mpnet + CLIP); a string measure keeps the default profile offline."""
    a, b = (" ".join(w[:-1] if len(w) > 3 and w.endswith("s") else w for w in normalise(s).split()) for s in (a, b))
    return difflib.SequenceMatcher(None, a, b).ratio()


def filter_concepts(concepts: list[dict], names: list[str], max_chars: int, name_similarity: float,
                    duplicate_similarity: float) -> tuple[list[dict], list[dict]]:
    """Label-free CBM's filters (docs/paper.md §1.2): drop concepts over `max_chars` characters, those naming the
    class (contain a name or synonym, or similarity >= `name_similarity`), and near-duplicates of an earlier
    concept (similarity >= `duplicate_similarity`). Returns (kept, dropped with a reason)."""
    kept, dropped = [], []
    names = [normalise(n) for n in names if normalise(n)]
    for c in concepts:
        text = normalise(c["text"])
        reason = None
        if not text:
            reason = "empty"
        elif len(text) > max_chars:
            reason = f"longer than {max_chars} characters"
        elif any(re.search(rf"\b{re.escape(n)}\b", text) or similarity(text, n) >= name_similarity for n in names):
            reason = "names the class"
        else:
            dup = next((k["text"] for k in kept if similarity(text, k["text"]) >= duplicate_similarity), None)
            if dup is not None:
                reason = f"near-duplicate of {dup!r}"
        if reason:
            dropped.append({**c, "reason": reason})
        else:
            kept.append({**c, "text": text})
    return kept, dropped


# ----------------------------------------------------------------------------- LLM answers

PARSED_PER_CONCEPT = 4
"""An LLM answer's first 4 × n_concepts items are filtered (room for duplicates and class names); the rest are
never read, so the quadratic near-duplicate filter stays small whatever the answer's length."""

MAX_ANSWER_CHARS = 20_000
"""The longest LLM answer parsed: a list of a few short concepts is well under 2 kB; a longer answer is a runaway
generation, refused before any parsing."""

_BULLET = re.compile(r"[ \t]*(?:[-*•]|\d+[.)])[ \t]+(.+)")
"""One bulleted or numbered line (matched line by line, so parsing stays linear in the answer's size)."""


def parse_list(answer: str) -> list[str]:
    """Concept strings from an LLM answer, read as data (never evaluated): a JSON list of strings (or of
    objects with a concept/text/name field, or {"concepts": [...]}) anywhere in the text, tolerating prose
    around it, code fences and trailing commas; else a bulleted or numbered list. An answer over
    MAX_ANSWER_CHARS, or one with neither, raises ConceptError."""
    if len(answer) > MAX_ANSWER_CHARS:
        raise ConceptError(f"answer of {len(answer):,} characters, over the {MAX_ANSWER_CHARS:,} parsed "
                           f"(a runaway generation?): {answer[:120]!r}")
    text = re.sub(r"```(?:json)?", "", answer)
    start, end = text.find("["), text.rfind("]")
    if start != -1 and end > start:
        candidate = re.sub(r",\s*([\]}])", r"\1", text[start:end + 1])
        try:
            data = json.loads(candidate)
        except json.JSONDecodeError:
            data = None
        if isinstance(data, dict):
            data = data.get("concepts")
        if isinstance(data, list):
            items = []
            for d in data:
                if isinstance(d, dict):
                    d = next((d[k] for k in ("concept", "text", "name", "feature") if isinstance(d.get(k), str)), None)
                if isinstance(d, str) and d.strip():
                    items.append(d.strip())
            if items:
                return items
    lines = [m.group(1).strip() for line in text.splitlines() if (m := _BULLET.fullmatch(line))]
    if lines:
        return [re.sub(r"[.,;]+$", "", line) for line in lines]
    raise ConceptError(f"no JSON list or bulleted list in the answer: {answer[:120]!r}")


# ----------------------------------------------------------------------------- proposers

@dataclass(frozen=True)
class Proposer:
    """A registered concept proposer: `fn(classes, cfg) -> (concepts per class, header fields)`."""
    name: str
    fn: Callable
    needs_network: bool  # may download a model on first use
    deterministic: bool  # same inputs, same bank, with no cache
    description: str


PROPOSERS: dict[str, Proposer] = {}


def register(name: str, *, needs_network: bool, deterministic: bool, description: str):
    def wrap(fn):
        PROPOSERS[name] = Proposer(name, fn, needs_network, deterministic, description)
        return fn
    return wrap


@register("fieldguide", needs_network=False, deterministic=True,
          description="the world's field-guide sentence split into its part phrases")
def _fieldguide(classes: list[ClassInfo], cfg: config.Concepts):
    """'The X has a long thin beak, barred wings and a forked tail.' → the three part phrases; the species
    name is never emitted (the sentence's subject is cut off)."""
    out = []
    for c in classes:
        m = re.fullmatch(r"The (.+?) has (.+)\.", c.description.strip())
        if not m:
            raise ConceptError(f"class {c.label} ({c.name!r}): field-guide description {c.description!r} is not "
                               "'The <name> has <part>, <part> and <part>.'")
        phrases = re.split(r", | and ", m.group(2))
        out.append([{"text": re.sub(r"^(?:a|an) ", "", p.strip()), "weight": 1.0, "source": "fieldguide"}
                    for p in phrases])
    return out, dict(model=None, prompt=None, date=None, params={})


SYSTEM_PROMPT = "You write field guides. You describe how an object looks, never where it is found."
USER_PROMPT = ('List up to {n} short visual features that tell a "{name}" apart from similar objects in a photo: '
               'its parts with their shape, colour or pattern (for a car: "round headlights", "chrome grille"). '
               'Each feature at most four words, visible on the object itself, not its surroundings, and without '
               'the word "{name}". Answer with a JSON list of strings and nothing else.')
REPAIR_PROMPT = ('That was not usable. Answer only with a JSON list of short strings, '
                 'like ["feature one", "feature two"].')


def llm_messages(c: ClassInfo, n: int) -> list[dict]:
    """The chat prompt for one class (adapted from Label-free CBM's "important features" prompt; the
    paper's own prompt is not published)."""
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": USER_PROMPT.format(n=n, name=c.synonyms[0])}]


class LLMCache:
    """LLM answers on disk, one JSON file per request hash, so a re-run does not query the model again."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def key(self, request: dict) -> str:
        return json_sha256(request)

    def get(self, request: dict) -> dict | None:
        path = self.root / f"{self.key(request)}.json"
        return json.loads(path.read_text()) if path.is_file() else None

    def put(self, request: dict, response: str) -> dict:
        if not self.root.is_dir():
            self.root.mkdir(parents=True)
            (self.root / ".gitignore").write_text("*\n")  # a local cache, never committed
        entry = {"request": request, "response": response, "date": datetime.date.today().isoformat()}
        with atomic_path(self.root / f"{self.key(request)}.json") as tmp:
            tmp.write_text(json.dumps(entry, indent=2, sort_keys=True) + "\n")
        return entry


def load_generator(cfg: config.LLM) -> Callable[[list[dict], int], str]:
    """A `generate(messages, seed) -> answer` over transformers' text-generation pipeline for the local
    folder or hub id `cfg.model`; chat template when the tokenizer has one, else plain text."""
    import transformers  # seconds to import; only the LLM proposer needs it

    tok = hub.load(cfg.model, "concepts.llm.model", transformers.AutoTokenizer.from_pretrained)
    model = hub.load(cfg.model, "concepts.llm.model", transformers.AutoModelForCausalLM.from_pretrained,
                     torch_dtype="auto")
    pipe = transformers.pipeline("text-generation", model=model, tokenizer=tok,
                                 device=launch.device(cfg.device, "concepts.llm.device"))
    sample = dict(do_sample=True, temperature=cfg.temperature) if cfg.temperature > 0 else dict(do_sample=False)

    def generate(messages: list[dict], seed: int) -> str:
        transformers.set_seed(seed)
        prompt = messages if tok.chat_template else "\n\n".join(m["content"] for m in messages) + "\n"
        out = pipe(prompt, max_new_tokens=cfg.max_new_tokens, return_full_text=False, **sample)[0]["generated_text"]
        return out[-1]["content"] if isinstance(out, list) else out

    return generate


@register("llm", needs_network=True, deterministic=False,
          description="a local Hugging Face causal LM asked for part-level features as JSON, answers cached")
def _llm(classes: list[ClassInfo], cfg: config.Concepts, seed: int = 0, generate=None):
    """One chat per class; an answer that does not parse, or leaves no concept after the filters, gets a
    repair turn, at most `retries` times."""
    cache, dates, out, repairs = LLMCache(cfg.llm.cache_dir), [], [], 0
    gen = dict(max_new_tokens=cfg.llm.max_new_tokens, temperature=cfg.llm.temperature)
    for c in classes:
        messages, problem = llm_messages(c, cfg.llm.n_concepts), ""
        for _attempt in range(cfg.llm.retries + 1):
            request = {"model": cfg.llm.model, "messages": messages, "seed": seed + c.label, **gen}
            entry = cache.get(request)
            if entry is None:
                generate = generate or load_generator(cfg.llm)  # loaded only on a cache miss
                entry = cache.put(request, generate(messages, seed + c.label))
            answer = entry["response"]
            try:
                items = [{"text": t, "weight": 1.0, "source": f"llm:{cfg.llm.model}"}
                         for t in parse_list(answer)[:PARSED_PER_CONCEPT * cfg.llm.n_concepts]]  # bounds the filters
                kept, _ = filter_concepts(items, c.synonyms, cfg.max_chars, cfg.name_similarity,
                                          cfg.duplicate_similarity)
                problem = "" if kept else "every concept was filtered out"
            except ConceptError as e:
                problem = str(e)
            if not problem:
                dates.append(entry["date"])
                out.append(items)
                break
            messages = messages + [{"role": "assistant", "content": answer}, {"role": "user", "content": REPAIR_PROMPT}]
            repairs += 1
        else:
            raise ConceptError(f"concepts.llm: class {c.label} ({c.name!r}): no usable answer from {cfg.llm.model!r} "
                               f"after {cfg.llm.retries + 1} tries ({problem}); raise concepts.llm.retries or use a "
                               "stronger model")
    prompt = SYSTEM_PROMPT + "\n\n" + USER_PROMPT
    return out, dict(model=cfg.llm.model, prompt=prompt, date=max(dates),
                     params={**gen, "n_concepts": cfg.llm.n_concepts, "retries": cfg.llm.retries, "seed": seed,
                             "repairs": repairs})


# WordNet: the noun database (wndb(5)) read directly: data.noun lines are addressed by byte offset, which
# is also the number in an ImageNet class id (n01530575 = noun synset at offset 01530575, WordNet 3.0).
_WORDNET_DIRS = ("$WNSEARCHDIR", "$WNHOME/dict", "/usr/share/wordnet", "$NLTK_DATA/corpora/wordnet",
                 "~/nltk_data/corpora/wordnet", "/usr/share/nltk_data/corpora/wordnet",
                 "/usr/local/share/nltk_data/corpora/wordnet")


class WordNet:
    """Noun synsets of a local WordNet 3.0 database: lemmas, hypernyms and part meronyms."""

    def __init__(self, dict_dir: str = ""):
        tried = [dict_dir] if dict_dir else [os.path.expandvars(os.path.expanduser(d)) for d in _WORDNET_DIRS]
        found = next((Path(d) for d in tried if d and "$" not in d and (Path(d) / "data.noun").is_file()), None)
        if found is None:
            raise ConceptError("concepts.wordnet: no WordNet database (data.noun, index.noun) in "
                               f"{', '.join(d for d in tried if '$' not in d)}. Install it: `apt-get install "
                               "wordnet-base` (Debian/Ubuntu), or nltk's `python -m nltk.downloader wordnet` and "
                               "unzip it, or set concepts.wordnet.dict_dir to the folder holding data.noun")
        self.dir = found
        self._index: dict[str, list[int]] | None = None

    def synset(self, offset: int) -> dict:
        """{offset, lemmas, pointers: [(symbol, offset)]} of the noun synset at `offset`."""
        with open(self.dir / "data.noun", "rb") as f:
            f.seek(offset)
            line = f.readline().decode()
        fields = line.split(" | ")[0].split()
        if not fields or not fields[0].isdigit() or int(fields[0]) != offset or fields[2] != "n":
            raise ConceptError(f"{self.dir}/data.noun: no noun synset at offset {offset:08d}")
        n_words = int(fields[3], 16)
        lemmas = [fields[4 + 2 * i].replace("_", " ") for i in range(n_words)]
        at = 4 + 2 * n_words
        pointers = [(fields[at + 1 + 4 * i], int(fields[at + 2 + 4 * i])) for i in range(int(fields[at]))
                    if fields[at + 3 + 4 * i] == "n"]
        return {"offset": offset, "lemmas": lemmas, "pointers": pointers}

    def lookup(self, lemma: str) -> int:
        """Offset of the first (most frequent) noun sense of `lemma`."""
        if self._index is None:
            self._index = {}
            for line in (self.dir / "index.noun").read_text().splitlines():
                if line and not line.startswith(" "):
                    f = line.split()
                    n_senses, n_ptrs = int(f[2]), int(f[3])
                    self._index[f[0]] = [int(x) for x in f[6 + n_ptrs:6 + n_ptrs + n_senses]]
        key = "_".join(lemma.lower().split())
        if key not in self._index:
            raise ConceptError(f"concepts.wordnet: {lemma!r} is not a WordNet noun; name the class folder by its "
                               "WordNet id (n01530575) or give concepts.class_names")
        return self._index[key][0]

    def parts(self, offset: int, max_depth: int) -> list[tuple[str, str]]:
        """(part lemma, holonym lemma) for the part meronyms of the synset and of its hypernyms up to
        `max_depth` levels (breadth first, nearest first, each part once)."""
        seen, out, level = set(), [], [offset]
        for _ in range(max_depth + 1):
            nxt = []
            for off in level:
                if off in seen:
                    continue
                seen.add(off)
                s = self.synset(off)
                for sym, target in s["pointers"]:
                    if sym == "%p":
                        part = self.synset(target)["lemmas"][0]
                        if part != s["lemmas"][0] and part not in [p for p, _ in out]:
                            out.append((part, s["lemmas"][0]))
                    elif sym in ("@", "@i"):
                        nxt.append(target)
            level = nxt
        return out


@register("wordnet", needs_network=False, deterministic=True,
          description="part meronyms of the class's WordNet synset and its hypernyms (bird → beak, wing, feather)")
def _wordnet(classes: list[ClassInfo], cfg: config.Concepts):
    wn = WordNet(cfg.wordnet.dict_dir)
    out = []
    for c in classes:
        offset = int(c.wnid[1:]) if c.wnid else wn.lookup(c.synonyms[0])
        parts = wn.parts(offset, cfg.wordnet.max_depth)[:cfg.wordnet.max_concepts]
        if not parts:
            raise ConceptError(f"concepts.wordnet: class {c.label} ({c.name!r}): WordNet lists no parts for it or "
                               f"its hypernyms within {cfg.wordnet.max_depth} levels; use the llm proposer")
        own = wn.synset(offset)["lemmas"][0]  # the class's own parts are not prefixed with its name
        out.append([{"text": f"{holo} {part}" if cfg.wordnet.prefix and holo != own else part, "weight": 1.0,
                     "source": f"wordnet:{holo}"} for part, holo in parts])
    return out, dict(model=f"wordnet:{wn.dir}", prompt=None, date=None, params=config.as_dict(cfg.wordnet))


BANK_FIX = ("write it again as UTF-8 JSON (a bank of ours, or the official {dataset: [[name, weight]]}), or point "
            "concepts.bank.path at another")


def read_official(path: str | Path, dataset: str) -> list[dict]:
    """One dataset's concepts from a bank in the official repository's format {dataset: [[name, weight]]}
    (names lowercase strings, weights numbers; docs/paper.md §1.1), such as the copy shipped
    (config.OFFICIAL_BANK)."""
    where = str(path)
    data = read_json(path, fix=BANK_FIX)
    if dataset not in data:
        raise ConceptError(f"{where}: no dataset {dataset!r} (concepts.bank.dataset); has {', '.join(sorted(data))}")
    out = []
    for i, entry in enumerate(data[dataset]):
        if (not isinstance(entry, list) or len(entry) != 2 or not isinstance(entry[0], str)
                or entry[0] != entry[0].lower() or type(entry[1]) not in (int, float)):
            raise ConceptError(f"{where}: {dataset}[{i}]: expected [lowercase name, weight], got {entry!r}")
        out.append({"text": entry[0].strip(), "weight": float(entry[1]), "source": f"official:{dataset}"})
    return out


@register("bank", needs_network=False, deterministic=True,
          description="an existing bank: ours (cft-concept-bank/1) or the official repository's per-dataset format")
def _bank(classes: list[ClassInfo], cfg: config.Concepts):
    """A bank of ours must list the same classes; an official per-dataset bank gives every class the same
    concepts and weights (the official code applies one list to the whole dataset)."""
    path = cfg.bank.path
    if "schema" in read_json(path, fix=BANK_FIX):
        bank = load(path)
        names = [c["name"] for c in bank["classes"]]
        if names != [c.name for c in classes]:
            raise ConceptError(f"{path}: its classes {names} are not the dataset's {[c.name for c in classes]}")
        return [c["concepts"] for c in bank["classes"]], {**bank["header"], "params": {"path": path}}
    concepts = read_official(path, cfg.bank.dataset)
    return [list(concepts) for _ in classes], dict(model=None, prompt=None, date=None,
                                                   params={"path": path, "dataset": cfg.bank.dataset})



def propose(cfg: config.Concepts, classes: list[ClassInfo], seed: int = 0, **kwargs) -> tuple[dict, list[dict]]:
    """Run the configured proposer and the filters. Returns (validated bank, dropped concepts with class
    and reason). `kwargs` go to the proposer (the llm proposer takes `generate`, for tests)."""
    spec = PROPOSERS[cfg.proposer]
    if spec.name == "llm":
        kwargs["seed"] = seed
    per_class, header = spec.fn(classes, cfg, **kwargs)
    entries, dropped = [], []
    filters = dict(max_chars=cfg.max_chars, name_similarity=cfg.name_similarity,
                   duplicate_similarity=cfg.duplicate_similarity)
    cap = cfg.llm.n_concepts if spec.name == "llm" else None  # the number the model was asked for
    for c, concepts in zip(classes, per_class):
        kept, gone = filter_concepts(concepts, c.synonyms, **filters)
        if cap is not None and len(kept) > cap:
            gone += [{**k, "reason": f"beyond concepts.llm.n_concepts ({cap})"} for k in kept[cap:]]
            kept = kept[:cap]
        if not kept:
            raise ConceptError(f"concepts.{cfg.proposer}: class {c.label} ({c.name!r}): every concept was "
                               f"filtered out: {[(d['text'], d['reason']) for d in gone]}")
        dropped += [{"label": c.label, "name": c.name, "text": d["text"], "reason": d["reason"]} for d in gone]
        entries.append({"label": c.label, "name": c.name, "concepts": kept})
    header = {"proposer": spec.name, "model": header["model"], "prompt": header["prompt"],
              "prompt_sha256": sha256(header["prompt"]) if header["prompt"] else None,
              "params": {**header["params"], "filters": filters}, "date": header["date"]}
    return validate({"schema": SCHEMA, "header": header, "classes": entries}), dropped
