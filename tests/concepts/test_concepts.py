"""Concept discovery (CFT §3.1): proposers recover what they read, LLM answers are parsed as data and
filtered as in Label-free CBM, and a bank is validated and named by its content."""

import json
import re
import time

import pytest

from cftlib import concepts
from cftlib.concepts import ClassInfo, ConceptError
from cftlib.core import config, hub
from cftlib.core.io import CorruptFile
from cftlib.data import world
from cftlib.stages import params


def _cfg(**kw):
    if kw.get("dataset", "world") == "world":
        return config.parse({"concepts": kw}).concepts
    return config.parse({"concepts": kw, "masks": {"grounder": "groundingsam"}, "pretrain": {"zoo": "vit_b"},
                         "bases": {"seeds": 1}, "finetune": {"arms": ["none", "ce", "cft"], "cnn": {"arms": []}},
                         "ablations": {"k": [], "noise": [], "relevance": [], "validation": []},
                         "evaluate": {"splits": [], "alignment_splits": [], "benchmarks": {"imagenet_val": "-"}}}
                        ).concepts


# ----------------------------------------------------------------------------- fieldguide

def test_fieldguide_recovers_every_species_parts(small_world):
    _, _, data_dir = small_world
    guide = world.load_guide(data_dir)
    bank, dropped = concepts.propose(_cfg(), concepts.classes_from_guide(guide))
    assert not dropped
    for entry, c in zip(guide, bank["classes"]):
        want = {world.PHRASES[p][a] for p, a in entry["parts"].items() if a != "none"}
        texts = {k["text"] for k in c["concepts"]}
        assert texts == want, entry["name"]
        assert {world.concept_part(t) for t in texts} == {p for p, a in entry["parts"].items() if a != "none"}
        assert not any(w in t.split() for t in texts for w in entry["name"].split()), "species name leaked"


def test_fieldguide_rejects_an_unexpected_description():
    with pytest.raises(ConceptError, match="class 0 .*field-guide description"):
        concepts.propose(_cfg(), [ClassInfo(0, "x", "A bird with a beak.")])


# ----------------------------------------------------------------------------- parsing and filters

@pytest.mark.parametrize("answer, want", [
    ('["long beak", "striped wings"]', ["long beak", "striped wings"]),
    ('Sure! Here are the features:\n```json\n["long beak", "striped wings",]\n```\nHope it helps.',
     ["long beak", "striped wings"]),
    ('{"concepts": [{"concept": "long beak"}, {"text": "red crest"}]}', ["long beak", "red crest"]),
    ("Features:\n1. Long beak.\n2) striped wings\n- red crest", ["Long beak", "striped wings", "red crest"]),
])
def test_parse_list_reads_json_and_lists(answer, want):
    assert concepts.parse_list(answer) == want


@pytest.mark.parametrize("answer", ["I cannot help with that.", '["long beak", "wings"', "[1, 2, 3]", ""])
def test_parse_list_rejects_malformed_answers(answer):
    with pytest.raises(ConceptError, match="no JSON list"):
        concepts.parse_list(answer)


def test_parse_list_reads_bullets_line_by_line_and_refuses_runaway_answers():
    with pytest.raises(ConceptError, match="no JSON list"):
        concepts.parse_list("\n" * (concepts.MAX_ANSWER_CHARS - 1))  # blank lines only (was quadratic in them)
    assert concepts.parse_list("Sure:\n\n  - long beak\n\t2) striped wings.\n") == ["long beak", "striped wings"]
    with pytest.raises(ConceptError, match="over the 20,000 parsed"):
        concepts.parse_list('["long beak"]' + " " * concepts.MAX_ANSWER_CHARS)


def test_parse_list_never_evaluates():
    with pytest.raises(ConceptError):
        concepts.parse_list('[__import__("os").system("false")]')


def test_filters_drop_long_duplicate_and_class_name_concepts():
    items = [{"text": t, "weight": 1.0, "source": "t"} for t in
             ["Long beak", "long beaks", "ashen piper beak", "ashen pipers", "a very long and slender curved beak tip",
              "Striped wings.", "red crest"]]
    kept, dropped = concepts.filter_concepts(items, ["ashen piper", "piper bird"], 30, 0.85, 0.9)
    assert [k["text"] for k in kept] == ["long beak", "striped wings", "red crest"]
    reasons = {d["text"]: d["reason"] for d in dropped}
    assert reasons["long beaks"].startswith("near-duplicate")
    assert reasons["ashen piper beak"] == reasons["ashen pipers"] == "names the class"
    assert reasons["a very long and slender curved beak tip"].startswith("longer than 30")


# ----------------------------------------------------------------------------- llm

def _llm_cfg(tmp_path, model="stub", retries=1):
    return _cfg(proposer="llm", llm={"model": model, "cache_dir": str(tmp_path / "cache"), "retries": retries})


def test_llm_proposer_retries_then_caches(tmp_path):
    calls = []

    def generate(messages, seed):
        calls.append(messages)
        return "no idea" if len(messages) == 2 else '["long beak", "glen wren tail", "striped wings",]'

    classes = [ClassInfo(0, "glen wren")]
    bank, dropped = concepts.propose(_llm_cfg(tmp_path), classes, generate=generate)
    assert len(calls) == 2 and calls[1][-1]["content"] == concepts.REPAIR_PROMPT
    assert [k["text"] for k in bank["classes"][0]["concepts"]] == ["long beak", "striped wings"]
    assert bank["header"]["prompt_sha256"] == concepts.sha256(bank["header"]["prompt"])
    assert bank["header"]["params"]["repairs"] == 1  # the unparsable first answer, counted in the bank

    def fail(messages, seed):
        raise AssertionError("a re-run must not query the model")

    again, _ = concepts.propose(_llm_cfg(tmp_path), classes, generate=fail)
    assert again == bank
    assert (tmp_path / "cache" / ".gitignore").read_text() == "*\n"


def test_llm_proposer_keeps_at_most_n_concepts(tmp_path):
    answer = "[" + ", ".join(f'"{w} wing"' for w in ("red", "blue", "green", "barred", "spotted", "plain")) + "]"
    cfg = _cfg(proposer="llm", llm={"model": "stub", "cache_dir": str(tmp_path / "cache"), "n_concepts": 4})
    bank, dropped = concepts.propose(cfg, [ClassInfo(0, "glen wren")], generate=lambda m, s: answer)
    assert [k["text"] for k in bank["classes"][0]["concepts"]] == ["red wing", "blue wing", "green wing", "barred wing"]
    assert [(d["text"], d["reason"]) for d in dropped] == [(t, "beyond concepts.llm.n_concepts (4)")
                                                           for t in ("spotted wing", "plain wing")]
    assert bank["header"]["params"]["repairs"] == 0
    many = "[" + ", ".join(f'"wing {i}"' for i in range(1000)) + "]"  # the filters see only the first 4 × 4
    cfg = _cfg(proposer="llm", llm={"model": "stub2", "cache_dir": str(tmp_path / "cache"), "n_concepts": 4})
    bank, dropped = concepts.propose(cfg, [ClassInfo(0, "glen wren")], generate=lambda m, s: many)
    assert len(bank["classes"][0]["concepts"]) + len(dropped) == 4 * 4  # every item read is kept or dropped


def test_llm_proposer_gives_up_after_bounded_retries(tmp_path):
    calls = []

    def generate(messages, seed):
        calls.append(1)
        return '["glen wren"]'  # parses, but only names the class

    with pytest.raises(ConceptError, match=r"class 0 \('glen wren'\).*after 3 tries.*filtered out"):
        concepts.propose(_llm_cfg(tmp_path, retries=2), [ClassInfo(0, "glen wren")], generate=generate)
    assert len(calls) == 3


def test_llm_hub_id_offline_fails_at_once_naming_the_model(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.time()
    with pytest.raises(hub.ModelUnavailable,
                       match=r"concepts.llm.model.*'nobody/no-such-llm'.*huggingface-cli download"):
        concepts.propose(_llm_cfg(tmp_path, model="nobody/no-such-llm"), [ClassInfo(0, "glen wren")])
    assert time.time() - start < 30


def test_a_local_model_folder_that_does_not_load_is_not_called_missing(tmp_path):
    """A damaged folder is there: the error says so and how to save it again, never "not a local folder"."""
    from transformers import AutoConfig

    folder = tmp_path / "llm"
    folder.mkdir()
    (folder / "config.json").write_text('{"model_type": "llama", "hidden_size": ')  # cut short
    with pytest.raises(hub.ModelUnavailable) as err:
        hub.load(str(folder), "concepts.llm.model", AutoConfig.from_pretrained)
    msg = str(err.value)
    assert msg.startswith(f"concepts.llm.model: the folder {folder} is there but does not load")
    assert "save_pretrained" in msg and "not a local folder" not in msg


def test_llm_proposer_end_to_end_with_a_tiny_causal_lm(tmp_path):
    """A real transformers text-generation pipeline over a 2-layer Llama saved to disk: one answer wrapped
    in prose with a trailing comma and the class name, one numbered list with a duplicate."""
    from tiny_hf import tiny_llm

    classes = [ClassInfo(0, "ashen piper"), ClassInfo(1, "glen wren")]
    answers = ['Sure! ["long beak", "striped wings", "ashen piper",]',
               "1. Forked tail\n2. Tufted crest\n3. forked tail"]
    model = tiny_llm(tmp_path / "llm", [(concepts.llm_messages(c, 8), a) for c, a in zip(classes, answers)])
    bank, dropped = concepts.propose(_llm_cfg(tmp_path, model=str(model)), classes)
    assert [[k["text"] for k in c["concepts"]] for c in bank["classes"]] == [
        ["long beak", "striped wings"], ["forked tail", "tufted crest"]]
    assert {(d["label"], d["reason"].split(" ")[0]) for d in dropped} == {(0, "names"), (1, "near-duplicate")}
    assert bank["header"]["model"] == str(model) and bank["header"]["date"]
    assert len(list((tmp_path / "cache").glob("*.json"))) == 2


# ----------------------------------------------------------------------------- wordnet

def _write_wordnet(root, synsets):
    """A tiny WordNet database in wndb(5) format: synsets {key: (lemmas, [(pointer, key)])}; byte offsets
    computed so every data.noun line starts at its own offset, as in the real files."""
    keys = list(synsets)
    header = "  1 tiny WordNet for tests\n"

    def line(k, offsets):
        lemmas, ptrs = synsets[k]
        words = " ".join(f"{w.replace(' ', '_')} 0" for w in lemmas)
        p = " ".join(f"{sym} {offsets[t]:08d} n 0000" for sym, t in ptrs)
        return f"{offsets[k]:08d} 05 n {len(lemmas):02x} {words} {len(ptrs):03d} {p} | gloss\n".replace("  ", " ")

    offsets, at = {}, len(header)
    for k in keys:  # fixed-width offsets: a line's length does not depend on the values
        offsets[k] = at
        at += len(line(k, {x: 0 for x in keys}))
    root.mkdir(parents=True)
    (root / "data.noun").write_text(header + "".join(line(k, offsets) for k in keys))
    index = sorted(f"{w.replace(' ', '_').lower()} n 1 0 1 0 {offsets[k]:08d}" for k in keys for w in synsets[k][0])
    (root / "index.noun").write_text(header + "\n".join(index) + "\n")
    return offsets


def test_wordnet_proposes_part_meronyms_through_hypernyms(tmp_path):
    offsets = _write_wordnet(tmp_path / "wn", {
        "bird": (["bird"], [("%p", "beak"), ("%p", "wing"), ("@", "animal")]),
        "animal": (["animal"], [("%p", "head")]),
        "finch": (["finch"], [("@", "bird")]),
        "robin": (["robin", "redbreast"], [("@", "bird"), ("%p", "breast")]),
        "beak": (["beak", "bill"], []), "wing": (["wing"], []), "head": (["head"], []), "breast": (["breast"], []),
    })
    cfg = _cfg(proposer="wordnet", dataset="folder", image_dir="x", wordnet={"dict_dir": str(tmp_path / "wn")})
    classes = concepts.classes_from_folder([f"n{offsets['finch']:08d}", "robin"])
    bank, _ = concepts.propose(cfg, classes)
    assert [k["text"] for k in bank["classes"][0]["concepts"]] == ["bird beak", "bird wing", "animal head"]
    assert [k["text"] for k in bank["classes"][1]["concepts"]] == ["breast", "bird beak", "bird wing",
                                                                  "animal head"]
    with pytest.raises(ConceptError, match="'sparrow' is not a WordNet noun"):
        concepts.propose(cfg, [ClassInfo(0, "sparrow")])


def test_wordnet_missing_is_a_clear_error(tmp_path):
    cfg = _cfg(proposer="wordnet", dataset="folder", image_dir="x", wordnet={"dict_dir": str(tmp_path)})
    with pytest.raises(ConceptError, match="no WordNet database.*apt-get install wordnet-base"):
        concepts.propose(cfg, [ClassInfo(0, "bird")])


# ----------------------------------------------------------------------------- bank proposer and schema

def test_official_bank_gives_every_class_the_dataset_concepts():
    bank, dropped = concepts.propose(_cfg(proposer="bank"), [ClassInfo(0, "a"), ClassInfo(1, "b")])
    first = bank["classes"][0]["concepts"]
    assert len(first) == 23 and first == bank["classes"][1]["concepts"]
    assert {k["text"]: k["weight"] for k in first}["bird beak"] == 3.0
    with pytest.raises(ConceptError, match="no dataset 'imagenet'.*celeba, cub_birds, waterbirds"):
        concepts.propose(_cfg(proposer="bank", bank={"dataset": "imagenet"}), [ClassInfo(0, "a")])


def test_official_format_is_checked(tmp_path):
    (tmp_path / "b.json").write_text(json.dumps({"d": [["Bird", 1.0]]}))
    with pytest.raises(ConceptError, match=r"d\[0\]: expected \[lowercase name, weight\]"):
        concepts.propose(_cfg(proposer="bank", bank={"path": str(tmp_path / "b.json"), "dataset": "d"}),
                         [ClassInfo(0, "a")])


def _bank():
    return {"schema": concepts.SCHEMA,
            "header": {"proposer": "test", "model": None, "prompt": None, "prompt_sha256": None, "params": {},
                       "date": None},
            "classes": [{"label": 0, "name": "glen wren", "concepts": [{"text": "long beak"}]},
                        {"label": 1, "name": "ashen piper", "concepts": [{"text": "red crest", "weight": 2}]}]}


def test_bank_round_trip_is_named_by_its_content(tmp_path):
    path = concepts.save(_bank(), tmp_path / "concepts")
    bank = concepts.load(tmp_path / "concepts")
    assert path.name == f"bank-{concepts.content_hash(bank)}.json"
    assert bank["classes"][0]["concepts"][0] == {"text": "long beak", "weight": 1.0, "source": ""}
    edited = json.loads(path.read_text())
    edited["classes"][1]["concepts"][0]["weight"] = 3.0
    path.write_text(json.dumps(edited))
    with pytest.raises(ConceptError, match="edited after it was written"):
        concepts.load(path)


@pytest.mark.parametrize("edit, match", [
    (lambda b: b["classes"][1]["concepts"][0].update(weight="x"), r"class 1 \('ashen piper'\): concepts\[0\].weight"),
    (lambda b: b["classes"][1]["concepts"][0].update(weight=-1.0), r"weight: must be a positive number"),
    (lambda b: b["classes"][0].update(concepts=[]), r"class 0 \('glen wren'\): concepts: must be a non-empty"),
    (lambda b: b["classes"][0]["concepts"].append({"text": "long beak"}), "duplicate concept text"),
    (lambda b: b["classes"][1].update(label=5), r"class 5 .*label"),
    (lambda b: b["classes"][0]["concepts"][0].update(part="beak"), r"concepts\[0\]: must be an object with text"),
    (lambda b: b["header"].pop("date"), "header: must have exactly the keys"),
    (lambda b: b["header"].update(prompt="p", prompt_sha256="0"), "prompt_sha256: does not match"),
    (lambda b: b.update(schema="other/2"), "schema"),
])
def test_bad_bank_errors_name_the_class_and_field(edit, match):
    bank = _bank()
    edit(bank)
    with pytest.raises(ConceptError, match=match):
        concepts.validate(bank)


def test_bank_file_that_is_not_json_or_missing(tmp_path):
    bank = tmp_path / "bank.json"
    for content, what in ((b'{"schema": ', r"not valid JSON \(line 1, column 12"),
                          ('{"cub_birds": [["bec", 1]]}'.encode("latin-1").replace(b"bec", b"b\xe9c"),
                           r"not UTF-8 text \(byte 18\)")):
        bank.write_bytes(content)
        for read in (lambda: concepts.load(bank), lambda: concepts.read_official(bank, "cub_birds")):
            with pytest.raises(CorruptFile, match=f"^{re.escape(str(bank))}: {what}.*point concepts.bank.path at"):
                read()
    with pytest.raises(ConceptError, match="expected one bank-<hash>.json, found 0"):
        concepts.load(tmp_path)


def test_config_names_a_wrong_proposer():
    with pytest.raises(config.ConfigError, match="concepts.proposer: unknown proposer 'gpt'"):
        params.parse({"concepts": {"proposer": "gpt"}})
    with pytest.raises(config.ConfigError, match="concepts.llm.model: required"):
        params.parse({"concepts": {"proposer": "llm"}})
