"""Write the Postman collection of openapi.yml, with the files its forms send.

    python scripts/gen_postman.py --out-dir var/postman

openapi-to-postmanv2 (the converter behind Postman's own import, pinned in
postman/package-lock.json) makes the collection; this script only adds what
an OpenAPI document cannot say, so that the whole collection runs in order
against a live server (Postman's Runner, or newman):

- ``{{baseUrl}}`` defaults to the server's default address;
- every request checks that it got a 2xx;
- the job requests are chained: the submitted job's id is kept in a
  collection variable, its status is polled until it finished, then its result
  is read; the uploaded job is the one cancelled; the text-to-image row made
  is polled the same way, then its URL and its file are read;
- the live model changes come last, unload before load, so the run leaves the
  server serving what it served before;
- the two form files (``example.jpg``, the docs' example photo, and ``inputs.jsonl``) are written next to
  the collection, which names them relative to its own folder;
- a form field of type object, which the converter writes as the text
  ``[object Object]``, carries its example as JSON, or is left out (disabled)
  when the document gives none.

The converter gives every item a random id and fakes response bodies that
have no example, so its output differs from run to run: it is generated into
``var/``, not checked in.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serving.settings import REPO_ROOT, Settings  # noqa: E402
from tasks.image import EXAMPLE_IMAGE_FILE  # noqa: E402

CONVERTER = REPO_ROOT / "postman" / "node_modules" / ".bin" / "openapi2postmanv2"
OPTIONS = "folderStrategy=Tags,parametersResolution=Example"
COLLECTION = "serve-http.postman_collection.json"
IMAGE, INPUTS = "example.jpg", "inputs.jsonl"
# The uploaded job is cancelled right after it is submitted; this many inputs
# keep it queued or running until the cancel arrives.
UPLOAD_LINES = 1000
POLLS = 600  # 100 ms apart: a minute for the submitted job to finish

ANY_2XX = "pm.test('answered 2xx', () => pm.expect(pm.response.code).to.be.within(200, 299));"


def poll_script(counter: str) -> str:
    """A test script that asks for the same request again (100 ms later) while
    the job it shows is queued or running, ``POLLS`` times at most."""
    return f"""\
const job = pm.response.json();
if (job.status === 'queued' || job.status === 'running') {{
  const polls = Number(pm.collectionVariables.get('{counter}') || 0) + 1;
  pm.collectionVariables.set('{counter}', polls);
  pm.test('the job finishes within {POLLS} polls', () => pm.expect(polls).to.be.below({POLLS}));
  if (polls < {POLLS}) {{
    pm.execution.setNextRequest(pm.info.requestId);
    setTimeout(() => {{}}, 100);
  }}
}}"""


POLL_JOB = poll_script("job_polls")


def default_base_url() -> str:
    # 127.0.0.1, not localhost: Node may resolve localhost to ::1 first.
    return f"http://127.0.0.1:{Settings.model_fields['port'].default}"


def convert(spec: Path) -> dict:
    """openapi-to-postmanv2's collection of ``spec``, untouched."""
    if not CONVERTER.exists():
        raise SystemExit(f"{CONVERTER} is missing: run `make postman`")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / COLLECTION
        done = subprocess.run([str(CONVERTER), "-s", str(spec), "-o", str(out), "-O", OPTIONS],
                              capture_output=True, text=True)
        if done.returncode != 0 or not out.exists():
            raise SystemExit(f"openapi2postmanv2 failed:\n{done.stdout}{done.stderr}")
        return json.loads(out.read_text())


def operation(item: dict) -> str:
    """``"GET /v1/jobs/{job_id}"``: the item's operation as openapi.yml names it."""
    request = item["request"]
    path = "/".join("{%s}" % part[1:] if part.startswith(":") else part for part in request["url"]["path"])
    return f"{request['method']} /{path}"


def requests_of(collection: dict) -> dict[str, dict]:
    found: dict[str, dict] = {}

    def walk(items: list[dict]) -> None:
        for item in items:
            if "item" in item:
                walk(item["item"])
            elif operation(item) in found:
                raise ValueError(f"two requests for {operation(item)}")
            else:
                found[operation(item)] = item

    walk(collection["item"])
    return found


def on_test(item: dict, script: str) -> None:
    item.setdefault("event", []).append({"listen": "test", "script": {"type": "text/javascript", "exec": script.splitlines()}})


def set_path_variable(item: dict, name: str, value: str) -> None:
    (variable,) = [v for v in item["request"]["url"]["variable"] if v["key"] == name]
    variable["value"] = value


def form_field(item: dict, key: str) -> dict:
    (field,) = [f for f in item["request"]["body"]["formdata"] if f["key"] == key]
    return field


def multipart_examples(document: dict) -> dict[str, dict]:
    """Each multipart operation's form example and property schemas, by operation."""
    found = {}
    for path, item in document["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            media = op.get("requestBody", {}).get("content", {}).get("multipart/form-data")
            if media is not None:
                found[f"{method.upper()} {path}"] = media
    return found


def fill_object_fields(item: dict, media: dict) -> None:
    example = media.get("example") or {}
    properties = media["schema"].get("properties", {})
    for field in item["request"]["body"]["formdata"]:
        if field.get("value") != "[object Object]":
            continue
        value = example.get(field["key"], properties.get(field["key"], {}).get("example"))
        if value is None:
            field.update(value="", disabled=True)
        else:
            field["value"] = json.dumps(value)


def reorder(collection: dict, folder: str, first: Sequence[dict], last: Sequence[dict] = ()) -> None:
    """Within ``folder``: the ``first`` items in that order, the others, then ``last``."""
    (items,) = [f["item"] for f in collection["item"] if f.get("name") == folder]
    chosen = [*first, *last]
    items[:] = [*first, *[i for i in items if not any(i is c for c in chosen)], *last]


def move(collection: dict, item: dict, source: str, target: str) -> None:
    """Move ``item`` from folder ``source`` to the end of folder ``target``."""
    folders = {f.get("name"): f["item"] for f in collection["item"] if "item" in f}
    folders[source][:] = [i for i in folders[source] if i is not item]
    folders[target].append(item)


def chain(collection: dict, document: dict) -> dict:
    """The converted collection of ``document``, made to run top to bottom (see the module docstring)."""
    by_op = requests_of(collection)
    for op, media in multipart_examples(document).items():
        fill_object_fields(by_op[op], media)
    collection["variable"] = [
        {"key": "baseUrl", "value": default_base_url()},
        {"key": "job_id", "value": ""},
        {"key": "upload_job_id", "value": ""},
        {"key": "job_polls", "value": "0"},
        {"key": "image_id", "value": ""},
        {"key": "image_job_id", "value": ""},
        {"key": "image_polls", "value": "0"},
    ]
    collection["event"] = [{"listen": "test", "script": {"type": "text/javascript", "exec": [ANY_2XX]}}]

    submit, upload = by_op["POST /v1/jobs"], by_op["POST /v1/jobs/upload"]
    status, result, cancel = (by_op[f"{m} /v1/jobs/{{job_id}}{tail}"] for m, tail in
                              (("GET", ""), ("GET", "/result"), ("DELETE", "")))
    on_test(submit, "pm.collectionVariables.set('job_id', pm.response.json().id);\n"
                    "pm.collectionVariables.set('job_polls', 0);")
    on_test(upload, "pm.collectionVariables.set('upload_job_id', pm.response.json().id);")
    on_test(status, POLL_JOB)
    for item in (status, result):
        set_path_variable(item, "job_id", "{{job_id}}")
    set_path_variable(cancel, "job_id", "{{upload_job_id}}")
    reorder(collection, "jobs", [upload, cancel, submit, status, result])

    # Text to image: the row made is polled until its image is stored, then
    # its URL and its file (a jobs route, moved here to follow the row's job).
    create, image, url = (by_op[op] for op in ("POST /generated-images", "GET /generated-images/{image_id}",
                                               "GET /generated-images/{image_id}/url"))
    job_file = by_op["GET /v1/jobs/{job_id}/files/{name}"]
    on_test(create, "pm.collectionVariables.set('image_id', pm.response.json().id);\n"
                    "pm.collectionVariables.set('image_job_id', pm.response.json().job_id);\n"
                    "pm.collectionVariables.set('image_polls', 0);")
    on_test(image, poll_script("image_polls"))
    for item in (image, url):
        set_path_variable(item, "image_id", "{{image_id}}")
    set_path_variable(job_file, "job_id", "{{image_job_id}}")
    move(collection, job_file, "jobs", "text to image")
    reorder(collection, "text to image", [create, image, url, job_file])

    form_field(upload, "inputs")["src"] = INPUTS
    form_field(by_op["POST /object-detection"], "image")["src"] = IMAGE

    unload = by_op["POST /v2/repository/models/{name}/unload"]
    load = by_op["POST /v2/repository/models/{name}/load"]
    reorder(collection, "v2", [], [unload, load])
    (v2,) = [f for f in collection["item"] if f.get("name") == "v2"]
    collection["item"] = [f for f in collection["item"] if f is not v2] + [v2]
    return collection


def upload_lines(document: dict) -> str:
    """The upload example's JSON lines, repeated to ``UPLOAD_LINES`` lines."""
    media = multipart_examples(document)["POST /v1/jobs/upload"]
    lines = str((media.get("example") or {}).get("inputs", "")).splitlines()
    if not lines:
        print(f"gen_postman: the upload has no example inputs; {INPUTS} is empty", file=sys.stderr)
        return ""
    return "\n".join(lines[i % len(lines)] for i in range(UPLOAD_LINES)) + "\n"


def write(out_dir: Path, spec: Path = REPO_ROOT / "openapi.yml") -> Path:
    """Write the collection and its two form files into ``out_dir``; the collection's path."""
    document = yaml.safe_load(spec.read_text())
    collection = chain(convert(spec), document)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / INPUTS).write_text(upload_lines(document))
    (out_dir / IMAGE).write_bytes(EXAMPLE_IMAGE_FILE.read_bytes())  # the docs' example photo
    path = out_dir / COLLECTION
    path.write_text(json.dumps(collection, indent=2, ensure_ascii=False) + "\n")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", type=Path, default=REPO_ROOT / "var" / "postman")
    print(write(parser.parse_args().out_dir))
