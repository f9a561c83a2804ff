#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: llmctl maintainers
# MIT License (see the project's LICENSE)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: bench
short_description: Benchmark a model or an endpoint on the managed host (C(llmctl bench))
version_added: 0.1.0
description:
  - Runs C(llmctl bench) with the arguments of C(llmctl bench) and returns what it printed, the parsed JSON
    (an array of llama-bench rows, or an object that holds them) and the raw output.
  - O(output) is passed through as C(-o), so any format llmctl knows can be asked for; only JSON is parsed.
  - A benchmark changes nothing on the host, so C(changed) is always false. In check mode it is not run
    (it would load the host), and the task returns no results.
  - A missed gate (C(--min-pp), C(--min-tg), C(--baseline)) fails the task, with the results.
options:
  model:
    description: Store name, GGUF path or C(smoke); default the config's C(bench.model). With O(url), the model name sent.
    type: str
  args:
    description:
      - Any other arguments of C(llmctl bench), passed as they are (C([-p, "128", -n, "32", -r, "3"]),
        C([--min-tg, "20"]), C([--concurrency, "1,4"])).
    type: list
    elements: str
    default: []
  output:
    description:
      - The output format (C(-o)). C(json-full) is llmctl's document (the rows and the host record);
        C(json), C(jsonl), C(csv), C(sql), C(md) are exactly llama-bench's.
    type: str
    default: json-full
  url:
    description: Benchmark this running OpenAI-compatible endpoint instead (C(--url)).
    type: str
  api_key:
    description: With O(url), the bearer key; passed as C(OPENAI_API_KEY) in llmctl's environment, never logged.
    type: str
extends_documentation_fragment:
  - llmctl.fleet.common
attributes:
  check_mode:
    support: full
    details: The benchmark is not run in check mode.
  diff_mode:
    support: none
author:
  - llmctl maintainers
"""

EXAMPLES = r"""
- name: A small engine benchmark of the smoke model
  llmctl.fleet.bench:
    model: smoke
    args: [-p, "64", -n, "16", -r, "3"]
  register: bench

- name: The endpoint under 1 and 4 streams, gated
  llmctl.fleet.bench:
    url: http://127.0.0.1:8000
    api_key: "{{ vault_llmctl_key }}"
    args: [--concurrency, "1,4", -n, "64", --min-tg, "10"]
"""

RETURN = r"""
bench:
  description: The JSON llmctl printed, an array of llama-bench rows or an object; null for a format that is not JSON.
  returned: when the benchmark ran
  type: raw
rows:
  description: The llama-bench rows (the array itself, or the object's C(results)).
  returned: when the benchmark ran and printed JSON
  type: list
  elements: dict
host:
  description: The host record (CPU, RAM, GPUs, versions), when the output holds one.
  returned: when the output holds one
  type: dict
stdout:
  description: What llmctl printed, as it printed it (write it to a file to keep the exact bytes).
  returned: when the benchmark ran
  type: str
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llmctl.fleet.plugins.module_utils.llmctl import Llmctl, common_spec


def rows_of(doc):
    if isinstance(doc, list):
        return doc
    if isinstance(doc, dict):
        rows = doc.get("results")
        return rows if isinstance(rows, list) else None
    return None


def main():
    module = AnsibleModule(
        argument_spec=common_spec(
            model=dict(type="str"),
            args=dict(type="list", elements="str", default=[]),
            output=dict(type="str", default="json-full"),
            url=dict(type="str"),
            api_key=dict(type="str", no_log=True),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if module.check_mode:
        module.exit_json(changed=False, msg="check mode: the benchmark was not run")
    args = ["bench"]
    if p["model"]:
        args.append(p["model"])
    if p["url"]:
        args += ["--url", p["url"]]
    args += ["-o", p["output"], "--quiet"] + list(p["args"])
    llmctl = Llmctl(module, secrets={"OPENAI_API_KEY": p["api_key"]})
    rc, doc, out, err = llmctl.run(args, ok=(0, 1))
    result = dict(changed=False, bench=doc, stdout=out)
    rows = rows_of(doc)
    if rows is not None:
        result["rows"] = rows
    if isinstance(doc, dict) and isinstance(doc.get("host"), dict):
        result["host"] = doc["host"]
    if rc != 0:
        llmctl.fail(args, rc, out, err, None, **dict((k, v) for k, v in result.items() if k != "changed"))
    module.exit_json(**result)


if __name__ == "__main__":
    main()
