"""Good specs load to the right values; positions, env substitution, secrets, JSON Schema."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from specs import Diagnostic, SampleEntry, Spec, SpecError, format_path, json_schema, load_spec
from specs.yamlread import read_yaml

REPO = Path(__file__).resolve().parent.parent

DESIGN_EXAMPLE = """\
version: 1
providers:                 # optional; without it every model uses the embedded backend
  lab:
    type: local            # embedded backend, data under .modelsync/local unless `path:` says
  prod:
    type: astica           # or autogon, annolab, scenario
    api_key: ${env:ASTICA_API_KEY}   # secrets only through ${env:NAME}
    base_url: http://127.0.0.1:8700  # optional
    rate_limit: 90         # optional: requests a minute per endpoint
models:
  shapes:                  # the key is the model's identity in this repo
    provider: lab          # optional when there is one provider (or none)
    title: Shapes          # the remote title; defaults to the key
    type: vision
    purpose: classification
    tags: [demo]
    classes:
      circle:
        samples:
          - data/circle/*.png              # a path, glob, directory, or http(s)/file URL
      square:
        samples:
          - path: data/square/
          - url: https://example.org/sq1.png
            uid: sq-1                      # optional user id; caption: optional text
    training:
      auto: true           # train when the dataset or config changed since the last trained version
      model_type: small    # small | medium | large
      base: null           # a model version or saved name to fine-tune from
      config: {steps: 300, learning_rate: 0.1}
    lifecycle:
      prevent_destroy: false
      prune: managed       # managed: remove only samples modelsync uploaded; all: also foreign ones; none
"""

SECRET = "sk-live-0123456789abcdef"


def write(tmp_path: Path, text: str, name: str = "modelsync.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_design_example_loads_to_the_declared_values(tmp_path):
    spec = load_spec(write(tmp_path, DESIGN_EXAMPLE), env={"ASTICA_API_KEY": SECRET})

    assert set(spec.providers) == {"lab", "prod"}
    lab, prod = spec.providers["lab"], spec.providers["prod"]
    assert lab.type == "local" and lab.api_key is None and lab.path is None
    assert prod.type == "astica"
    assert prod.api_key is not None and prod.api_key.get_secret_value() == SECRET
    assert prod.base_url == "http://127.0.0.1:8700"
    assert prod.rate_limit == 90

    model = spec.models["shapes"]
    assert (model.provider, model.title, model.type, model.purpose, model.tags) == (
        "lab",
        "Shapes",
        "vision",
        "classification",
        ["demo"],
    )
    assert model.classes["circle"].samples == ["data/circle/*.png"]
    path_entry, url_entry = model.classes["square"].samples
    assert isinstance(path_entry, SampleEntry) and path_entry.path == "data/square/" and path_entry.url is None
    assert isinstance(url_entry, SampleEntry) and url_entry.url == "https://example.org/sq1.png"
    assert url_entry.uid == "sq-1" and url_entry.caption is None and url_entry.boxes == []
    t = model.training
    assert (t.auto, t.model_type, t.base) == (True, "small", None)
    assert t.config == {"steps": 300, "learning_rate": 0.1}
    assert type(t.config["steps"]) is int and type(t.config["learning_rate"]) is float
    assert (model.lifecycle.prevent_destroy, model.lifecycle.prune) == (False, "managed")
    assert spec.provider_for("shapes") == ("lab", lab)


def test_quickstart_example_loads():
    path = REPO / "examples" / "quickstart" / "modelsync.yaml"
    spec = load_spec(path)
    assert set(spec.models["shapes"].classes) == {"circle", "square"}
    assert spec.path == path and spec.base_dir == path.parent


def test_defaults_and_the_implicit_local_provider(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            """\
            version: 1
            models:
              shapes:
                classes:
                  circle: {samples: [c.png]}
                  square: {samples: [s.png]}
            """,
        )
    )
    assert list(spec.providers) == ["local"]
    assert spec.providers["local"].type == "local"
    name, provider = spec.provider_for("shapes")
    assert name == "local" and provider.type == "local"
    model = spec.models["shapes"]
    assert model.title is None and model.title_or("shapes") == "shapes"
    assert (model.type, model.purpose, model.tags, model.provider) == ("vision", "classification", [], None)
    assert (model.training.auto, model.training.model_type, model.training.config) == (True, "small", {})
    assert (model.lifecycle.prevent_destroy, model.lifecycle.prune) == (False, "managed")
    assert spec.path == tmp_path / "modelsync.yaml" and spec.base_dir == tmp_path


def test_single_declared_provider_is_used_by_models_without_one(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            """\
            version: 1
            providers:
              lab: {type: local, path: data/store}
            models:
              m:
                title: Em
                classes:
                  a: {samples: [a.png]}
                  b: {samples: [b.png]}
            """,
        )
    )
    assert spec.provider_for("m")[0] == "lab"
    assert spec.providers["lab"].path == "data/store"
    assert spec.models["m"].title_or("m") == "Em"


def test_vendor_client_options(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            """\
            version: 1
            providers:
              prod:
                type: astica
                api_key: ${env:K}
                rate_limit: 600
                total_rate_limit: 900
                timeout: 2.5
                max_retries: 0
                backoff_base: 0.1
                send_urls: false
              aug: {type: autogon, api_key: "${env:K}", train_timeout: 600, timeout: 10}
              plain: {type: scenario, api_key: "${env:K}"}
            models: {}
            """,
        ),
        env={"K": SECRET},
    )
    prod, aug, plain = (spec.providers[n] for n in ("prod", "aug", "plain"))
    assert (prod.rate_limit, prod.total_rate_limit, prod.timeout, prod.max_retries) == (600, 900, 2.5, 0)
    assert (prod.backoff_base, prod.send_urls) == (0.1, False)
    assert (aug.train_timeout, aug.timeout) == (600.0, 10.0)
    unset = ("total_rate_limit", "timeout", "max_retries", "backoff_base", "send_urls", "train_timeout")
    assert all(getattr(plain, name) is None for name in unset)  # None: the provider's own default


def test_a_model_on_an_inference_only_provider_declares_no_classes(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            """\
            version: 1
            providers:
              al: {type: annolab, api_key: "${env:K}", group_name: Acme, project: Docs}
            models:
              invoices:
                title: Invoice Classifier
                tags: [prod]
            """,
        ),
        env={"K": SECRET},
    )
    model = spec.models["invoices"]
    assert model.classes == {} and model.title_or("invoices") == "Invoice Classifier"
    assert spec.provider_for("invoices")[0] == "al"


def test_single_class_is_fine_without_auto_training_or_for_detection(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            """\
            version: 1
            models:
              a:
                training: {auto: false}
                classes: {only: {samples: [x.png]}}
              b:
                purpose: detection
                classes:
                  car:
                    samples:
                      - path: car.png
                        caption: a red car
                        boxes: [{x: 0, y: 1.5, w: 10, h: 20}, {label: car, x: 1, y: 2, w: 3, h: 4}]
            """,
        )
    )
    entry = spec.models["b"].classes["car"].samples[0]
    assert isinstance(entry, SampleEntry)
    assert entry.caption == "a red car"
    assert [(b.label, b.x, b.y, b.w, b.h) for b in entry.boxes] == [(None, 0, 1.5, 10, 20), ("car", 1, 2, 3, 4)]


def test_string_fields_keep_the_text_yaml_would_read_as_numbers(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            """\
            version: 1
            models:
              m:
                title: 2024
                tags: [1.10, v2]
                training: {base: 20240101_120000, config: {steps: 1_000, tag: "x"}}
                classes:
                  0:
                    samples:
                      - {path: zero.png, uid: 007}
                  1: {samples: [one.png]}
            """,
        )
    )
    m = spec.models["m"]
    assert m.title == "2024"
    assert m.tags == ["1.10", "v2"]
    assert m.training.base == "20240101_120000"
    assert m.training.config == {"steps": 1000, "tag": "x"}
    assert list(m.classes) == ["0", "1"]
    assert m.classes["0"].samples[0].uid == "007"


def test_env_substitution_in_provider_strings(tmp_path, monkeypatch):
    path = write(
        tmp_path,
        """\
        version: 1
        providers:
          vendor:
            type: scenario
            api_key: ${env:SCEN_KEY}
            base_url: http://${env:SCEN_HOST}:8700/api
            team_id: team-${env:TEAM}
            project_id: ${env:PROJECT}
            rate_limit: ${env:RATE}
        models: {}
        """,
    )
    env = {"SCEN_KEY": SECRET, "SCEN_HOST": "127.0.0.1", "TEAM": "7", "PROJECT": "p1", "RATE": "30"}
    vendor = load_spec(path, env=env).providers["vendor"]
    assert vendor.api_key.get_secret_value() == SECRET
    assert (vendor.base_url, vendor.team_id, vendor.project_id, vendor.rate_limit) == (
        "http://127.0.0.1:8700/api",
        "team-7",
        "p1",
        30,
    )
    # env defaults to os.environ
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert load_spec(path).providers["vendor"].api_key.get_secret_value() == SECRET


def test_env_references_outside_providers_are_left_alone(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            """\
            version: 1
            models:
              m:
                title: ${env:NOT_SUBSTITUTED}
                training: {auto: false}
                classes: {a: {samples: [a.png]}}
            """,
        ),
        env={},
    )
    assert spec.models["m"].title == "${env:NOT_SUBSTITUTED}"


def test_secret_never_in_repr_str_or_dump(tmp_path):
    spec = load_spec(write(tmp_path, DESIGN_EXAMPLE), env={"ASTICA_API_KEY": SECRET})
    for text in (repr(spec), str(spec), spec.model_dump_json(), repr(spec.providers), str(spec.providers["prod"])):
        assert SECRET not in text
    assert "**********" in repr(spec.providers["prod"])


def test_locate_points_at_values_and_keys(tmp_path):
    spec = load_spec(write(tmp_path, DESIGN_EXAMPLE), env={"ASTICA_API_KEY": SECRET})
    assert spec.locate(("models", "shapes")) == (11, 3)  # a mapping: its key
    assert spec.locate(("models", "shapes", "title")) == (13, 12)  # a scalar: its value
    assert spec.locate(("models", "shapes", "classes", "circle", "samples", 0)) == (20, 13)
    assert spec.locate(("models", "shapes", "classes", "square", "samples", 1)) == (24, 13)
    assert spec.locate(("models", "shapes", "classes", "square", "samples", 1, "uid")) == (25, 18)
    assert spec.locate(("models", "shapes", "training", "config", "learning_rate")) == (30, 43)
    # absent nodes: the nearest existing ancestor
    assert spec.locate(("models", "shapes", "classes", "square", "samples", 7)) == (22, 9)
    assert spec.locate(("models", "nope", "classes")) == (10, 1)
    assert spec.locate(()) == (1, 1)


def test_diagnostic_for_later_stages(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write(tmp_path, DESIGN_EXAMPLE)
    spec = load_spec(Path("modelsync.yaml").absolute(), env={"ASTICA_API_KEY": "k"})
    d = spec.diagnostic(("models", "shapes", "classes", "circle", "samples", 0), "no such file: data/circle/*.png")
    assert d == Diagnostic(
        "modelsync.yaml", 20, 13, "models.shapes.classes.circle.samples[0]", "no such file: data/circle/*.png"
    )
    assert str(d) == "modelsync.yaml:20:13: models.shapes.classes.circle.samples[0]: no such file: data/circle/*.png"
    assert str(spec.diagnostic((), "whole file")) == "modelsync.yaml:1:1: whole file"


def test_file_outside_cwd_is_shown_with_its_path(tmp_path, monkeypatch):
    inner = tmp_path / "proj"
    inner.mkdir()
    path = write(inner, "version: 1\nmodels: {}\n")
    monkeypatch.chdir(tmp_path)
    assert str(load_spec(path).diagnostic((), "x")) == "proj/modelsync.yaml:1:1: x"
    monkeypatch.chdir(inner)
    assert load_spec(path).diagnostic(("models",), "x").file == "modelsync.yaml"


def test_merge_keys_and_anchors(tmp_path):
    spec = load_spec(
        write(
            tmp_path,
            """\
            version: 1
            models:
              a: &base
                training: {auto: false, model_type: medium}
                classes: {c: {samples: [a.png]}}
              b:
                <<: *base
                title: B
            """,
        )
    )
    b = spec.models["b"]
    assert b.title == "B" and b.training.model_type == "medium" and list(b.classes) == ["c"]


def test_utf8_bom_and_comments_only_lines(tmp_path):
    path = tmp_path / "modelsync.yaml"
    path.write_bytes(b"\xef\xbb\xbf# spec\nversion: 1\nmodels: {}\n")
    spec = load_spec(path)
    assert spec.models == {} and spec.locate(("version",)) == (2, 10)


def test_pure_python_parser_gives_the_same_values_positions_and_errors(tmp_path, monkeypatch):
    """ruamel.yaml.clib (libyaml) is optional: without it the pure-Python parser must agree."""
    import ruamel.yaml.main

    monkeypatch.chdir(tmp_path)
    good = write(tmp_path, DESIGN_EXAMPLE)
    bad = write(
        tmp_path,
        """\
        version: 1
        models:
          m:
            titel: x
            classes:
              a:
              b: {samples: [b.png, {path: c.png, uid: "x y"}]}
            training: {model_type: huge, base: 20240101_120000}
        """,
        "bad.yaml",
    )
    nodes = [("models", "shapes", "classes", "square", "samples", 1, "uid"), ("providers", "prod", "rate_limit")]

    def run() -> tuple:
        spec = load_spec(good, env={"ASTICA_API_KEY": SECRET})
        with pytest.raises(SpecError) as info:
            load_spec(bad)
        return spec.model_dump(), [spec.locate(n) for n in nodes], [str(d) for d in info.value.diagnostics]

    fast = run()
    monkeypatch.setattr(ruamel.yaml.main, "CParser", None)
    assert run() == fast
    assert len(fast[2]) == 4 and "bad.yaml:6:7: models.m.classes.a: class 'a' has no samples" in fast[2]


def test_format_path_quotes_keys_that_are_not_plain_words():
    assert format_path(("models", "shapes", "classes", "circle", "samples", 2)) == (
        "models.shapes.classes.circle.samples[2]"
    )
    assert format_path(("models", "my model", "title")) == 'models["my model"].title'
    assert format_path(()) == ""


def test_diagnostic_str_omits_an_empty_path():
    assert str(Diagnostic("f.yaml", 0, 0, "", "no such file: f.yaml")) == "f.yaml:0:0: no such file: f.yaml"
    assert str(Diagnostic("f.yaml", 3, 5, "a.b", "bad")) == "f.yaml:3:5: a.b: bad"
    assert str(SpecError([Diagnostic("f", 1, 1, "", "x"), Diagnostic("f", 2, 1, "y", "z")])) == "f:1:1: x\nf:2:1: y: z"


# -- JSON Schema ----------------------------------------------------------------------


def _plain(text: str) -> object:
    data, _, problems = read_yaml(textwrap.dedent(text))
    assert not problems
    return json.loads(json.dumps(data))  # plain JSON types, as an editor sees the file


def test_json_schema_structure_titles_and_descriptions():
    schema = json_schema()
    assert schema["title"] == "modelsync spec"
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["required"]) == {"version", "models"}
    assert schema["properties"]["version"]["const"] == 1 or schema["properties"]["version"].get("enum") == [1]
    defs = schema["$defs"]
    for name in ("ProviderSpec", "ModelSpec", "ClassSpec", "SampleEntry", "BoxSpec", "TrainingSpec", "LifecycleSpec"):
        assert defs[name]["additionalProperties"] is False, name
        assert defs[name].get("description"), name
    provider = defs["ProviderSpec"]["properties"]
    assert provider["type"]["enum"] == ["local", "astica", "autogon", "annolab", "scenario"]
    assert "description" in provider["api_key"]
    for name in ("total_rate_limit", "timeout", "max_retries", "backoff_base", "send_urls", "train_timeout"):
        assert provider[name].get("description"), name
    assert {"type": "integer", "exclusiveMinimum": 0} in provider["total_rate_limit"]["anyOf"]
    assert {"type": "integer", "minimum": 0} in provider["max_retries"]["anyOf"]
    assert {"type": "number", "exclusiveMinimum": 0} in provider["timeout"]["anyOf"]
    assert {"type": "boolean"} in provider["send_urls"]["anyOf"]
    assert "classes" not in defs["ModelSpec"].get("required", [])  # optional on inference-only providers
    assert defs["TrainingSpec"]["properties"]["model_type"]["enum"] == ["small", "medium", "large"]
    json.dumps(schema)  # serialisable as is


def test_json_schema_validates_the_examples_and_rejects_typos():
    jsonschema = pytest.importorskip("jsonschema")
    validator = jsonschema.Draft202012Validator(json_schema())
    validator.check_schema(json_schema())
    for text in (DESIGN_EXAMPLE, (REPO / "examples" / "quickstart" / "modelsync.yaml").read_text()):
        errors = list(validator.iter_errors(_plain(text)))
        assert errors == [], [e.message for e in errors]
    bad = _plain(DESIGN_EXAMPLE.replace("    training:\n", "    trainig:\n"))
    assert any("trainig" in e.message for e in validator.iter_errors(bad))
    literal_key = _plain(DESIGN_EXAMPLE.replace("${env:ASTICA_API_KEY}", SECRET))
    assert list(validator.iter_errors(literal_key)), "the schema should ask for ${env:NAME} api keys"


def test_spec_model_validate_fills_the_default_provider():
    spec = Spec.model_validate({"version": 1, "models": {}})
    assert list(spec.providers) == ["local"]
    assert spec.locate(("models",)) == (0, 0)
