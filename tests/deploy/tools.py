"""Renderers and validators for tests/deploy.rs and tests/schema.rs.

Runs in the venv .ci/run makes (.ci/python-tools.txt). Every command
prints one JSON document on stdout; the Rust tests make the assertions.

  tools.py render CHART RELEASE NAMESPACE VALUES.json
      Helm's own engine (helm-python-sdk: Helm v4's Go SDK behind a C ABI)
      renders the chart as `helm template` would; prints the objects.
  tools.py render-error CHART RELEASE NAMESPACE VALUES.json
      Renders, expecting the chart to refuse the values; prints the message.
  tools.py lint CHART KUBE_VERSION
      `helm lint --strict`; prints the report.
  tools.py kustomize DIR
      `kubectl kustomize DIR` (kustomize built into kubectl); prints the objects.
  tools.py kube-validate VERSION < objects.json
      Each object against the Kubernetes VERSION OpenAPI schema, strictly
      (unknown fields are errors), with kubernetes-validate; prints
      [{"kind", "name", "schema": the version whose schema was used, "errors"}].
  tools.py json-schema SCHEMA.json < [{"file", "doc"}]
      Each document against the JSON Schema (draft-07) with jsonschema;
      prints [{"file", "errors": [...]}].
"""

import json
import subprocess
import sys

import yaml


def documents(text):
    """The non-empty YAML documents of a multi-document stream."""
    return [d for d in yaml.safe_load_all(text) if d is not None]


def render(chart, release, namespace, values_file):
    import helm_python as helm

    with open(values_file) as f:
        values = json.load(f)
    with helm.Chart.load(chart) as c:
        c.validate_schema(values)
        manifests = c.render(values, name=release, namespace=namespace, is_install=True)
    objects = []
    for path in sorted(manifests):
        if path.endswith(".yaml") or path.endswith(".yml"):
            objects.extend(documents(manifests[path]))
    return objects


def render_error(chart, release, namespace, values_file):
    try:
        render(chart, release, namespace, values_file)
    except Exception as e:
        return str(e)
    sys.exit("the chart rendered values it should have refused")


def lint(chart, kube_version):
    import helm_python as helm

    return helm.lint(chart, strict=True, kube_version=kube_version)


def kustomize(directory):
    out = subprocess.run(
        ["kubectl", "kustomize", "--load-restrictor", "LoadRestrictionsNone", directory],
        check=True,
        capture_output=True,
        text=True,
    )
    return documents(out.stdout)


def kube_validate(version):
    import kubernetes_validate

    results = []
    for obj in json.load(sys.stdin):
        errors, used = [], None
        try:
            used = kubernetes_validate.validate(obj, version, strict=True)
        except Exception as e:  # invalid, no schema for the kind, a bad version
            errors.append(f"{type(e).__name__}: {e}".splitlines()[0])
        meta = obj.get("metadata", {})
        results.append(
            {"kind": obj.get("kind"), "name": meta.get("name"), "schema": used, "errors": errors}
        )
    return results


def json_schema(schema_file):
    import jsonschema

    with open(schema_file) as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    results = []
    for item in json.load(sys.stdin):
        errors = [
            f"{'.'.join(str(p) for p in e.absolute_path) or '(document)'}: {e.message}"
            for e in validator.iter_errors(item["doc"])
        ]
        results.append({"file": item["file"], "errors": errors})
    return results


def main(argv):
    commands = {
        "render": render,
        "render-error": render_error,
        "lint": lint,
        "kustomize": kustomize,
        "kube-validate": kube_validate,
        "json-schema": json_schema,
    }
    if len(argv) < 2 or argv[1] not in commands:
        sys.exit(__doc__)
    json.dump(commands[argv[1]](*argv[2:]), sys.stdout)


if __name__ == "__main__":
    main(sys.argv)
