#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: llmctl maintainers
# MIT License (see the project's LICENSE)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: health
short_description: Check llmctl's services on the managed host (C(llmctl health --json))
version_added: 0.1.0
description:
  - Runs C(llmctl health --json) (TCP, C(/health), C(/v1/models) and a one-token completion per service) and
    returns its JSON as the task's result.
  - The task fails when the overall status is in O(fail_on) (by default CRITICAL, and UNKNOWN, which means
    that llmctl could not check, because of a bad config, nothing to check, or another run holding the lock).
  - llmctl may restart a failed service (by its restart policy of threshold, backoff and budget); C(changed) is
    true when it did. In check mode it runs with C(--dry-run), which says what it would restart, restarts nothing
    and saves no state.
options:
  services:
    description: Services from the config to check (default all of them).
    type: list
    elements: str
    default: []
  url:
    description: Endpoints to check ad hoc (C(--url)); never restarted.
    type: list
    elements: str
    default: []
  model:
    description: With O(url), the model C(/v1/models) must list.
    type: str
  api_key:
    description:
      - With O(url), the bearer key; passed as C(OPENAI_API_KEY) in llmctl's environment, never logged.
      - Configured services use their own C(api_keys_file).
    type: str
  restart:
    description: V(false) reports only (C(--no-restart)).
    type: bool
    default: true
  timeout:
    description: Seconds per probe (C(--timeout)); default the config's C(health.timeout_s).
    type: float
  retries:
    description: Extra attempts (C(--retries)).
    type: int
  retry_delay:
    description: Seconds between attempts (C(--retry-delay)).
    type: float
  slow_ms:
    description: A completion slower than this is WARNING (C(--slow-ms)).
    type: int
  recovery_timeout:
    description: Seconds to wait for a restarted service (C(--recovery-timeout)).
    type: float
  wait:
    description: Seconds to wait for another health run's lock (C(--wait)).
    type: float
  textfile:
    description: Write node_exporter textfile metrics here (C(--textfile)); not in check mode.
    type: path
  fail_on:
    description: The statuses that fail the task.
    type: list
    elements: str
    choices: [WARNING, CRITICAL, UNKNOWN]
    default: [CRITICAL, UNKNOWN]
extends_documentation_fragment:
  - llmctl.fleet.common
attributes:
  check_mode:
    support: full
  diff_mode:
    support: none
author:
  - llmctl maintainers
"""

EXAMPLES = r"""
- name: Check every configured service; fail the host on CRITICAL
  llmctl.fleet.health:
  register: health

- name: Report only, and fail on WARNING too
  llmctl.fleet.health:
    services: [chat]
    restart: false
    fail_on: [WARNING, CRITICAL, UNKNOWN]
"""

RETURN = r"""
status:
  description: The overall status, the worst of the services'.
  returned: always
  type: str
  sample: OK
exit_code:
  description: llmctl's exit code (0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN).
  returned: always
  type: int
services:
  description: One entry per service as C(llmctl health --json) prints it (status, summary, latency, probes, restart decision).
  returned: always
  type: list
  elements: dict
notes:
  description: Notes of the run.
  returned: always
  type: list
  elements: str
dry_run:
  description: Whether the run was a dry run (check mode).
  returned: always
  type: bool
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llmctl.fleet.plugins.module_utils.llmctl import Llmctl, common_spec

RESERVED = ("changed", "failed", "msg", "rc", "cmd", "stdout", "stderr", "invocation")
OPTIONS = (
    ("timeout", "--timeout"),
    ("retries", "--retries"),
    ("retry_delay", "--retry-delay"),
    ("slow_ms", "--slow-ms"),
    ("recovery_timeout", "--recovery-timeout"),
    ("wait", "--wait"),
)


def summary(doc):
    """The services that are not OK, one Nagios-like phrase each (the summary names the service)."""
    bad = ["%s - %s" % (s.get("status"), s.get("summary")) for s in doc.get("services", []) if s.get("status") != "OK"]
    return "; ".join(bad) or "%s: %s" % (doc.get("status"), doc.get("error") or "; ".join(doc.get("notes", [])))


def main():
    module = AnsibleModule(
        argument_spec=common_spec(
            services=dict(type="list", elements="str", default=[]),
            url=dict(type="list", elements="str", default=[]),
            model=dict(type="str"),
            api_key=dict(type="str", no_log=True),
            restart=dict(type="bool", default=True),
            timeout=dict(type="float"),
            retries=dict(type="int"),
            retry_delay=dict(type="float"),
            slow_ms=dict(type="int"),
            recovery_timeout=dict(type="float"),
            wait=dict(type="float"),
            textfile=dict(type="path"),
            fail_on=dict(
                type="list", elements="str", default=["CRITICAL", "UNKNOWN"], choices=["WARNING", "CRITICAL", "UNKNOWN"]
            ),
        ),
        supports_check_mode=True,
    )
    p = module.params
    args = ["health", "--json"] + list(p["services"])
    for u in p["url"]:
        args += ["--url", u]
    if p["model"]:
        args += ["--model", p["model"]]
    for option, flag in OPTIONS:
        if p[option] is not None:
            args += [flag, str(p[option])]
    if not p["restart"]:
        args.append("--no-restart")
    if module.check_mode:
        args.append("--dry-run")
    elif p["textfile"]:
        args += ["--textfile", p["textfile"]]
    llmctl = Llmctl(module, secrets={"OPENAI_API_KEY": p["api_key"]})
    rc, doc, out, err = llmctl.run(args, ok=(0, 1, 2, 3))
    if not isinstance(doc, dict) or "status" not in doc:
        llmctl.fail(args, rc, out, err, doc)
    result = dict((k, v) for k, v in doc.items() if k not in RESERVED)
    result["changed"] = any(s.get("action") in ("restarted", "would_restart") for s in doc.get("services", []))
    if doc["status"] in p["fail_on"]:
        module.fail_json(msg=summary(doc), rc=rc, **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
