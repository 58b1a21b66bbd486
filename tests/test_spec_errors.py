"""Bad specs: every problem reported, as `file:line:col: path: message`, at the right line."""

from __future__ import annotations

import json
import os
import tempfile
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specs import ModelSpec, SpecError, format_path, load_spec

SECRET = "sk-live-0123456789abcdef"
CLASSES = ("classes:", "  circle: {samples: [c.png]}", "  square: {samples: [s.png]}")


def expand(text: str) -> str:
    """Dedent, and replace each line that says CLASSES with a model's two classes (three lines)."""
    out: list[str] = []
    for line in textwrap.dedent(text).splitlines(keepends=True):
        if line.strip() == "CLASSES":
            indent = line[: len(line) - len(line.lstrip())]
            out.extend(f"{indent}{c}\n" for c in CLASSES)
        else:
            out.append(line)
    return "".join(out)


@pytest.fixture
def errors(tmp_path, monkeypatch):
    """Write the spec as modelsync.yaml in a fresh cwd; return the diagnostics as strings."""
    monkeypatch.chdir(tmp_path)

    def run(text: str, env: dict[str, str] | None = None) -> list[str]:
        Path("modelsync.yaml").write_text(expand(text), encoding="utf-8")
        with pytest.raises(SpecError) as info:
            load_spec(tmp_path / "modelsync.yaml", env=env or {})
        lines = [str(d) for d in info.value.diagnostics]
        assert str(info.value) == "\n".join(lines)
        for line in lines:
            assert "Input should" not in line and "pydantic" not in line and "Traceback" not in line
        return lines

    return run


# -- the file itself ------------------------------------------------------------------


def test_missing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpecError) as info:
        load_spec(Path("modelsync.yaml"))
    assert [str(d) for d in info.value.diagnostics] == ["modelsync.yaml:0:0: no such file: modelsync.yaml"]


def test_directory_instead_of_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("modelsync.yaml").mkdir()
    with pytest.raises(SpecError) as info:
        load_spec(Path("modelsync.yaml"))
    assert str(info.value) == "modelsync.yaml:0:0: modelsync.yaml is a directory, not a spec file"


def test_not_utf8(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("modelsync.yaml").write_bytes(b"version: 1\nmodels:\n  caf\xe9: {}\n")
    with pytest.raises(SpecError) as info:
        load_spec(Path("modelsync.yaml"))
    assert str(info.value) == "modelsync.yaml:3:6: not UTF-8 text (byte 0xe9)"


def test_control_character(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("modelsync.yaml").write_text("version: 1\nmodels:\n  a\x07b: {}\n")
    with pytest.raises(SpecError) as info:
        load_spec(Path("modelsync.yaml"))
    assert str(info.value) == "modelsync.yaml:3:4: invalid YAML: character #x0007 is not allowed in YAML"


def test_two_documents(errors):
    assert errors("version: 1\n---\nmodels: {}\n") == [
        "modelsync.yaml:2:1: a spec is one YAML document, but a second one starts here"
    ]


def test_empty_file(errors):
    assert errors("") == ["modelsync.yaml:1:1: the file is empty; a spec starts with: version: 1"]
    assert errors("# only a comment\n") == ["modelsync.yaml:1:1: the file is empty; a spec starts with: version: 1"]


def test_not_a_mapping(errors):
    assert errors("- version: 1\n") == [
        "modelsync.yaml:1:1: expected a mapping with version:, providers: and models:, got a list"
    ]
    assert errors("--- 5\n") == ["modelsync.yaml:1:5: expected a mapping with version:, providers: and models:, got 5"]


def test_yaml_syntax_error_has_the_position_of_the_mark(errors):
    text = """\
    version: 1
    models:
      shapes: [a, b
      other: {}
    """
    (line,) = errors(text)
    # the wording is the parser's (libyaml's or ruamel's pure-Python one); the position is the mark's
    assert line.startswith("modelsync.yaml:4:8: invalid YAML: ")
    assert "expected ',' or ']'" in line and line.endswith("(while parsing a flow sequence at line 3)")


def test_tab_indentation(errors):
    (line,) = errors("version: 1\nmodels:\n\tshapes: {}\n")
    assert line.startswith("modelsync.yaml:3:1: invalid YAML: found character") and "cannot start any token" in line


def test_duplicate_keys_are_all_reported_with_both_lines(errors):
    text = """\
    version: 1
    models:
      shapes:
        title: A
        title: B
        CLASSES
      shapes: {}
    """
    assert errors(text) == [
        "modelsync.yaml:5:5: models.shapes.title: duplicate key 'title' (first at line 4)",
        "modelsync.yaml:9:3: models.shapes: duplicate key 'shapes' (first at line 3)",
    ]


# -- version and top level ------------------------------------------------------------


def test_unsupported_version(errors):
    assert errors("version: 2\nmodels: {}\n") == [
        "modelsync.yaml:1:10: version: unsupported version 2 (this modelsync reads version 1)"
    ]
    assert errors('version: "1"\nmodels: {}\n') == [
        "modelsync.yaml:1:10: version: version must be the number 1, not the string '1' (write version: 1)"
    ]


def test_missing_version_and_models(errors):
    assert errors("providers: {}\n") == [
        "modelsync.yaml:1:1: missing required key 'version' (write version: 1 at the top)",
        "modelsync.yaml:1:1: missing required key 'models'",
    ]


def test_unknown_top_level_key_lists_the_known_ones(errors):
    assert errors("version: 1\nmodels: {}\nextras: 1\n") == [
        "modelsync.yaml:3:1: extras: unknown key (expected one of: version, providers, models)"
    ]


# -- field errors: unknown keys at the key, bad values at the value -------------------


def test_unknown_key_with_a_suggestion_points_at_the_key(errors):
    text = """\
    version: 1
    models:
      shapes:
        titel: Shapes
        CLASSES
        training:
          modeltype: small
    """
    assert errors(text) == [
        "modelsync.yaml:4:5: models.shapes.titel: unknown key (did you mean 'title'?)",
        "modelsync.yaml:9:7: models.shapes.training.modeltype: unknown key (did you mean 'model_type'?)",
    ]


def test_bad_literal_values_point_at_the_value(errors):
    text = """\
    version: 1
    models:
      shapes:
        purpose: detect
        CLASSES
        training:
          model_type: huge
        lifecycle: {prune: al}
    """
    assert errors(text) == [
        "modelsync.yaml:4:14: models.shapes.purpose: expected one of classification, detection, got 'detect' "
        "(did you mean 'detection'?)",
        "modelsync.yaml:9:19: models.shapes.training.model_type: expected one of small, medium, large, got 'huge'",
        "modelsync.yaml:10:24: models.shapes.lifecycle.prune: expected one of managed, all, none, got 'al' "
        "(did you mean 'all'?)",
    ]


def test_type_errors_read_like_prose(errors):
    text = """\
    version: 1
    providers:
      p:
        type: astica
        api_key: ${env:K}
        rate_limit: lots
      q:
        type: autogon
        api_key: ${env:K}
        rate_limit: 0
    models:
      shapes:
        provider: p
        title: [a, b]
        tags: demo
        CLASSES
        training:
          auto: maybe
          config: {steps: [1, 2], learning_rate: null}
        lifecycle:
          prevent_destroy: 3
    """
    assert errors(text, env={"K": "k"}) == [
        "modelsync.yaml:6:17: providers.p.rate_limit: expected a whole number, got 'lots'",
        "modelsync.yaml:10:17: providers.q.rate_limit: must be greater than 0, got 0",
        "modelsync.yaml:14:12: models.shapes.title: expected a string, got a list",
        "modelsync.yaml:15:11: models.shapes.tags: expected a list, got 'demo'",
        "modelsync.yaml:20:13: models.shapes.training.auto: expected true or false, got 'maybe'",
        "modelsync.yaml:21:23: models.shapes.training.config.steps: "
        "a training setting must be a number, a string or true/false, got a list",
        "modelsync.yaml:21:46: models.shapes.training.config.learning_rate: "
        "a training setting must be a number, a string or true/false, got an empty value",
        "modelsync.yaml:23:24: models.shapes.lifecycle.prevent_destroy: expected true or false, got 3",
    ]


def test_missing_required_keys_name_the_key_at_the_parent(errors):
    text = """\
    version: 1
    providers:
      p: {api_key: x}
    models:
      shapes:
        title: S
    """
    assert errors(text) == [
        "modelsync.yaml:3:3: providers.p: missing required key 'type'",
        "modelsync.yaml:3:16: providers.p.api_key: api_key must come from the environment: write ${env:NAME}",
        "modelsync.yaml:5:3: models.shapes: missing required key 'classes'",
    ]


# -- classes and samples --------------------------------------------------------------


def test_empty_classes(errors):
    text = """\
    version: 1
    models:
      shapes:
        classes:
          circle:
            samples: []
          square:
          empty: {}
      other:
        classes: {}
    """
    assert errors(text) == [
        "modelsync.yaml:6:18: models.shapes.classes.circle.samples: class 'circle' has no samples",
        "modelsync.yaml:7:7: models.shapes.classes.square: class 'square' has no samples",
        "modelsync.yaml:8:7: models.shapes.classes.empty: missing required key 'samples'",
        "modelsync.yaml:10:14: models.other.classes: model 'other' has no classes; declare at least one",
    ]


def test_one_class_with_auto_training(errors):
    text = """\
    version: 1
    models:
      shapes:
        classes:
          circle: {samples: [c.png]}
    """
    assert errors(text) == [
        "modelsync.yaml:4:5: models.shapes.classes: needs two classes or more to train; "
        "add a class or set training.auto: false"
    ]


def test_sample_entries(errors):
    text = """\
    version: 1
    models:
      shapes:
        classes:
          circle:
            samples:
              - path: a.png
                url: https://example.org/a.png
              - caption: nothing to point at
              - 12.5e3
              - [a.png]
              - ftp://example.org/a.png
              - {url: "http:/broken"}
              - {path: b.png, uid: "has space"}
              - {path: c.png, uid: ""}
              - {path: d.png, boxes: [{x: -1, y: 0, w: 0, h: 2}, {x: 1, y: 1, w: 1}]}
              - {path: e.png, colour: red}
          square: {samples: [s.png]}
    """
    assert errors(text) == [
        "modelsync.yaml:7:13: models.shapes.classes.circle.samples[0]: "
        "a sample takes exactly one of path: or url: (this one has both)",
        "modelsync.yaml:9:13: models.shapes.classes.circle.samples[1]: "
        "a sample takes exactly one of path: or url: (this one has neither)",
        "modelsync.yaml:11:13: models.shapes.classes.circle.samples[3]: "
        "expected a path or URL, or a mapping with path: or url:, got a list",
        "modelsync.yaml:12:13: models.shapes.classes.circle.samples[4]: "
        "unsupported URL scheme 'ftp' (use http://, https:// or file://)",
        "modelsync.yaml:13:19: models.shapes.classes.circle.samples[5].url: "
        "url must be an http://, https:// or file:// URL, got 'http:/broken'",
        "modelsync.yaml:14:32: models.shapes.classes.circle.samples[6].uid: "
        "uid may contain only letters, digits and . _ : / -, got 'has space'",
        "modelsync.yaml:15:32: models.shapes.classes.circle.samples[7].uid: uid must not be empty",
        "modelsync.yaml:16:39: models.shapes.classes.circle.samples[8].boxes[0].x: must be 0 or more, got -1",
        "modelsync.yaml:16:52: models.shapes.classes.circle.samples[8].boxes[0].w: must be greater than 0, got 0",
        "modelsync.yaml:16:62: models.shapes.classes.circle.samples[8].boxes[1]: missing required key 'h'",
        "modelsync.yaml:17:27: models.shapes.classes.circle.samples[9].colour: unknown key "
        "(expected one of: path, url, uid, caption, boxes)",
    ]


def test_uid_too_long(errors):
    uid = "u" * 129
    text = f"""\
    version: 1
    models:
      shapes:
        classes:
          circle:
            samples:
              - path: a.png
                uid: {uid}
          square: {{samples: [s.png]}}
    """
    assert errors(text) == [
        "modelsync.yaml:8:18: models.shapes.classes.circle.samples[0].uid: uid is 129 characters long; the limit is 128"
    ]


def test_duplicate_uid_points_at_the_second_and_names_the_first(errors):
    text = """\
    version: 1
    models:
      shapes:
        classes:
          circle:
            samples:
              - {path: a.png, uid: same}
          square:
            samples:
              - path: b.png
                uid: same
      other:
        classes:
          circle:
            samples:
              - {path: a.png, uid: same}
          square: {samples: [s.png]}
    """
    assert errors(text) == [
        "modelsync.yaml:11:18: models.shapes.classes.square.samples[0].uid: duplicate uid 'same': "
        "already used at line 7, col 32 (models.shapes.classes.circle.samples[0].uid)"
    ]


def test_detection_model_without_any_box(errors):
    text = """\
    version: 1
    models:
      cars:
        purpose: detection
        training: {auto: false}
        classes:
          car:
            samples:
              - cars/
              - path: one.png
                caption: no boxes here
      fine:
        purpose: detection
        classes:
          car:
            samples:
              - path: a.png
                boxes: [{x: 1, y: 2, w: 3, h: 4}]
              - b.png
    """
    assert errors(text) == [
        "modelsync.yaml:3:3: models.cars: a detection model learns from boxes, but none of its samples has any: "
        "give samples boxes: [{label, x, y, w, h}], or set purpose: classification",
    ]


def test_box_label_must_name_a_class_of_the_model(errors):
    text = """\
    version: 1
    models:
      street:
        purpose: detection
        classes:
          car:
            samples:
              - path: a.png
                boxes:
                  - {label: car, x: 1, y: 2, w: 3, h: 4}
                  - {label: cra, x: 1, y: 2, w: 3, h: 4}
          bike:
            samples:
              - path: b.png
                boxes: [{x: 0, y: 0, w: 5, h: 5}, {label: wheel, x: 0, y: 0, w: 2, h: 2}]
    """
    assert errors(text) == [
        "modelsync.yaml:11:25: models.street.classes.car.samples[0].boxes[1].label: "
        "box label 'cra' is not a class of model 'street' (did you mean 'car'?)",
        "modelsync.yaml:15:55: models.street.classes.bike.samples[0].boxes[1].label: "
        "box label 'wheel' is not a class of model 'street' (classes: car, bike)",
    ]


def test_inference_only_provider_refuses_classes_and_training(errors):
    text = """\
    version: 1
    providers:
      al: {type: annolab, api_key: "${env:KEY}"}
    models:
      invoices:
        title: Invoice Classifier
      shapes:
        purpose: detection
        training: {auto: false}
        CLASSES
    """
    assert errors(text, env={"KEY": SECRET}) == [
        "modelsync.yaml:9:5: models.shapes.training: provider 'al' is annolab, which only runs inference on "
        "models built in its own tools: it cannot train (remove training:)",
        "modelsync.yaml:10:5: models.shapes.classes: provider 'al' is annolab, which only runs inference on "
        "models built in its own tools: it cannot upload samples or create classes (remove classes:)",
    ]


def test_classes_are_required_on_providers_that_upload(errors):
    text = """\
    version: 1
    providers:
      al: {type: annolab, api_key: "${env:KEY}"}
      prod: {type: astica, api_key: "${env:KEY}"}
    models:
      a:
        provider: al
      b:
        provider: prod
      c:
        provider: prod
        classes: {}
    """
    assert errors(text, env={"KEY": SECRET}) == [
        "modelsync.yaml:8:3: models.b: missing required key 'classes'",
        "modelsync.yaml:12:14: models.c.classes: model 'c' has no classes; declare at least one",
    ]


# -- providers -------------------------------------------------------------------------


def test_unknown_provider_and_provider_required(errors):
    text = """\
    version: 1
    providers:
      lab: {type: local}
      prod: {type: astica, api_key: "${env:ASTICA_API_KEY}"}
    models:
      shapes:
        provider: labb
        CLASSES
      other:
        CLASSES
      third:
        provider: staging
        CLASSES
    """
    assert errors(text, env={"ASTICA_API_KEY": SECRET}) == [
        "modelsync.yaml:7:15: models.shapes.provider: unknown provider 'labb' (did you mean 'lab'?)",
        "modelsync.yaml:11:3: models.other: provider is required when several are declared (one of lab, prod)",
        "modelsync.yaml:16:15: models.third.provider: unknown provider 'staging' (declared: lab, prod)",
    ]


def test_naming_a_provider_when_none_is_declared(errors):
    text = """\
    version: 1
    models:
      shapes:
        provider: cloud
        CLASSES
    """
    assert errors(text) == ["modelsync.yaml:4:15: models.shapes.provider: unknown provider 'cloud' (declared: local)"]


def test_duplicate_titles_on_one_provider(errors):
    text = """\
    version: 1
    providers:
      a: {type: local}
      b: {type: local, path: other}
    models:
      one:
        provider: a
        title: Shapes
        CLASSES
      two:
        provider: b
        title: Shapes
        CLASSES
      three:
        provider: a
        title: Shapes
        CLASSES
      Shapes:
        provider: a
        CLASSES
    """
    assert errors(text) == [
        "modelsync.yaml:20:12: models.three.title: title 'Shapes' is already used by model 'one' on provider 'a'",
        "modelsync.yaml:24:3: models.Shapes: title 'Shapes' is already used by model 'one' on provider 'a'",
    ]


def test_api_key_must_come_from_the_environment_and_is_never_printed(errors):
    text = f"""\
    version: 1
    providers:
      prod:
        type: astica
        api_key: {SECRET}
      other:
        type: autogon
        api_key: 12345
    models: {{}}
    """
    lines = errors(text)
    assert lines == [
        "modelsync.yaml:5:14: providers.prod.api_key: api_key must come from the environment: write ${env:NAME}",
        "modelsync.yaml:8:14: providers.other.api_key: api_key must come from the environment: write ${env:NAME}",
    ]
    assert not any(SECRET in line or "12345" in line for line in lines)


def test_provider_fields_that_do_not_apply(errors):
    text = """\
    version: 1
    providers:
      lab:
        type: local
        api_key: ${env:KEY}
        base_url: http://127.0.0.1:1
      prod:
        type: astica
        api_key: ${env:KEY}
        team_id: t1
        path: somewhere
      scen:
        type: scenario
        api_key: ${env:KEY}
        team_id: 42
        project_id: p
        output_layer: x
    models: {}
    """
    assert errors(text, env={"KEY": SECRET}) == [
        "modelsync.yaml:5:5: providers.lab.api_key: api_key does not apply to provider type 'local' "
        "(only to astica, autogon, annolab, scenario)",
        "modelsync.yaml:6:5: providers.lab.base_url: base_url does not apply to provider type 'local' "
        "(only to astica, autogon, annolab, scenario)",
        "modelsync.yaml:10:5: providers.prod.team_id: team_id does not apply to provider type 'astica' "
        "(only to scenario)",
        "modelsync.yaml:11:5: providers.prod.path: path does not apply to provider type 'astica' (only to local)",
        "modelsync.yaml:17:5: providers.scen.output_layer: output_layer does not apply to provider type 'scenario' "
        "(only to annolab)",
    ]


def test_client_options_are_typed_and_checked_at_their_value(errors):
    text = """\
    version: 1
    providers:
      prod:
        type: astica
        api_key: ${env:KEY}
        total_rate_limit: 0
        timeout: -1
        max_retries: 2.5
        backoff_base: .inf
        send_urls: maybe
      aug:
        type: autogon
        api_key: ${env:KEY}
        train_timeout: soon
        send_urls: false
        max_retries: -1
      lab:
        type: local
        timeout: 5
    models: {}
    """
    assert errors(text, env={"KEY": SECRET}) == [
        "modelsync.yaml:6:23: providers.prod.total_rate_limit: must be greater than 0, got 0",
        "modelsync.yaml:7:14: providers.prod.timeout: must be greater than 0, got -1",
        "modelsync.yaml:8:18: providers.prod.max_retries: expected a whole number, got 2.5",
        "modelsync.yaml:9:19: providers.prod.backoff_base: must be a finite number, got .inf",
        "modelsync.yaml:10:16: providers.prod.send_urls: expected true or false, got 'maybe'",
        "modelsync.yaml:14:20: providers.aug.train_timeout: expected a number, got 'soon'",
        "modelsync.yaml:15:5: providers.aug.send_urls: send_urls does not apply to provider type 'autogon' "
        "(only to astica)",
        "modelsync.yaml:16:18: providers.aug.max_retries: must be 0 or more, got -1",
        "modelsync.yaml:19:5: providers.lab.timeout: timeout does not apply to provider type 'local' "
        "(only to astica, autogon, annolab, scenario)",
    ]


def test_vendor_without_api_key_and_bad_type(errors):
    text = """\
    version: 1
    providers:
      prod:
        type: astika
      anno:
        type: annolab
        base_url: ftp://example.org
        projekt: p
    models: {}
    """
    assert errors(text) == [
        "modelsync.yaml:4:11: providers.prod.type: expected one of local, astica, autogon, annolab, scenario, "
        "got 'astika' (did you mean 'astica'?)",
        "modelsync.yaml:5:3: providers.anno: provider type 'annolab' needs an api_key: write api_key: ${env:NAME}",
        "modelsync.yaml:7:15: providers.anno.base_url: must be an http:// or https:// URL, got 'ftp://example.org'",
        "modelsync.yaml:8:5: providers.anno.projekt: unknown key (did you mean 'project'?)",
    ]


def test_env_problems_name_the_variable_never_the_value(errors):
    text = """\
    version: 1
    providers:
      prod:
        type: astica
        api_key: ${env:ASTICA_API_KEY}
        base_url: ${env:ASTICA_URL}
      anno:
        type: annolab
        api_key: ${env:EMPTY_KEY}
        project: ${ENV:PROJECT}
        group_name: g-${env:GROUP}
    models: {}
    """
    env = {"ASTICA_URL": f"ftp://{SECRET}", "EMPTY_KEY": ""}
    lines = errors(text, env=env)
    assert lines == [
        "modelsync.yaml:5:14: providers.prod.api_key: environment variable ASTICA_API_KEY is not set",
        "modelsync.yaml:6:15: providers.prod.base_url: must be an http:// or https:// URL, "
        "got the value of ${env:ASTICA_URL}",
        "modelsync.yaml:9:14: providers.anno.api_key: environment variable EMPTY_KEY is empty",
        "modelsync.yaml:10:14: providers.anno.project: cannot read ${ENV:PROJECT}: write ${env:NAME} "
        "(NAME: letters, digits, _)",
        "modelsync.yaml:11:17: providers.anno.group_name: environment variable GROUP is not set",
    ]
    assert not any(SECRET in line for line in lines)


def test_misspelled_api_key_is_an_unknown_key_and_its_value_is_not_shown(errors):
    text = f"""\
    version: 1
    providers:
      prod:
        type: astica
        apikey: ${{env:UNSET}}
        api-key: {SECRET}
    models: {{}}
    """
    assert errors(text) == [
        "modelsync.yaml:3:3: providers.prod: provider type 'astica' needs an api_key: write api_key: ${env:NAME}",
        "modelsync.yaml:5:5: providers.prod.apikey: unknown key (did you mean 'api_key'?)",
        "modelsync.yaml:6:5: providers.prod.api-key: unknown key (did you mean 'api_key'?)",
    ]


def test_secret_from_env_never_in_errors_about_it(tmp_path, monkeypatch):
    """A secret that lands somewhere odd (a number field) is still not echoed."""
    monkeypatch.chdir(tmp_path)
    Path("modelsync.yaml").write_text(
        "version: 1\nproviders:\n  p:\n    type: astica\n    api_key: ${env:K}\n    rate_limit: ${env:K}\nmodels: {}\n"
    )
    with pytest.raises(SpecError) as info:
        load_spec(Path("modelsync.yaml"), env={"K": SECRET})
    assert str(info.value) == (
        "modelsync.yaml:6:17: providers.p.rate_limit: expected a whole number, got the value of ${env:K}"
    )


# -- collecting everything ------------------------------------------------------------


def test_all_errors_are_collected_across_models_and_stages(errors):
    text = """\
    version: 1
    providers:
      prod: {type: astica, api_key: literal}
    models:
      a:
        provider: prod
        training: {model_type: huge}
        classes:
          x: {samples: [x.png]}
          y: {samples: []}
      b:
        provider: prod
        classes:
          only:
            samples:
              - {path: a.png, uid: dup}
              - {path: b.png, uid: dup}
    """
    assert errors(text) == [
        "modelsync.yaml:3:33: providers.prod.api_key: api_key must come from the environment: write ${env:NAME}",
        "modelsync.yaml:7:28: models.a.training.model_type: expected one of small, medium, large, got 'huge'",
        "modelsync.yaml:10:20: models.a.classes.y.samples: class 'y' has no samples",
        "modelsync.yaml:13:5: models.b.classes: needs two classes or more to train; "
        "add a class or set training.auto: false",
        "modelsync.yaml:17:32: models.b.classes.only.samples[1].uid: duplicate uid 'dup': "
        "already used at line 16, col 32 (models.b.classes.only.samples[0].uid)",
    ]


def test_alias_cycle_and_unknown_tags(errors):
    text = """\
    version: 1
    models: &m
      shapes: *m
      other:
        title: !secret x
    """
    assert errors(text) == [
        "modelsync.yaml:3:11: models.shapes: alias *m refers to a node that contains it (a cycle)",
        "modelsync.yaml:4:3: models.other: missing required key 'classes'",
        "modelsync.yaml:5:12: models.other.title: unsupported YAML tag !secret",
    ]


# -- property: unknown keys at model level never pass ---------------------------------

MODEL_FIELDS = set(ModelSpec.model_fields)
# Printable characters: YAML rejects or folds the others (NEL, surrogate-pair escapes) before we see them.
KEY_CHARS = st.characters(blacklist_categories=("Cs", "Cc", "Cf", "Co", "Cn", "Zl", "Zp"))


@settings(max_examples=60, deadline=None)
@given(
    extra=st.dictionaries(
        st.text(KEY_CHARS, min_size=1, max_size=24).filter(lambda k: k not in MODEL_FIELDS and k != "<<"),
        st.one_of(st.none(), st.integers(), st.text(KEY_CHARS, max_size=10), st.lists(st.integers(), max_size=3)),
        min_size=1,
        max_size=3,
    )
)
def test_any_unknown_model_key_is_rejected_with_a_path_naming_it(extra):
    model = {"classes": {"a": {"samples": ["a.png"]}, "b": {"samples": ["b.png"]}}, **extra}
    text = json.dumps({"version": 1, "models": {"m": model}}, indent=1, ensure_ascii=False)  # JSON is YAML
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "modelsync.yaml"
        path.write_text(text, encoding="utf-8")
        with pytest.raises(SpecError) as info:
            load_spec(path, env={})
    diags = info.value.diagnostics
    assert {d.path for d in diags} == {format_path(("models", "m", key)) for key in extra}
    for d in diags:
        assert d.message.startswith("unknown key")
        assert d.line >= 1 and d.col >= 1
        assert d.file == str(path) or not os.path.isabs(d.file)
