#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: llmctl maintainers
# MIT License (see the project's LICENSE)
from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
module: units
short_description: llmctl's hardened systemd units, rendered from the host's config and installed
version_added: 0.1.0
description:
  - Renders the units of the host's llmctl config (a server unit per service, the health check's service and
    timer, and in system mode the polkit rule and the sysusers.d file) and installs them with
    C(llmctl systemd install), which writes each file atomically, leaves files with the same bytes alone and
    removes llmctl's units for services no longer in the config.
  - C(changed) is true when a file is (or would be) written or removed, or, with O(enable)/O(now), when a unit
    is not enabled or not active yet (asked with C(systemctl is-enabled) and C(is-active)).
  - Check mode asks C(llmctl systemd install --dry-run); C(--diff) shows each file that would change.
  - User or system units follow the O(mode) option (llmctl's global C(--user) / C(--system)).
options:
  enable:
    description: Enable the server units and the health timer (C(--enable)).
    type: bool
    default: false
  now:
    description: With O(enable), start them too (C(--now)).
    type: bool
    default: false
  systemctl:
    description:
      - V(false) writes the files only (C(--no-systemctl)); no systemd-sysusers, daemon-reload or enable runs.
      - For hosts without systemd as PID 1 (containers, image builds, tests).
    type: bool
    default: true
  systemctl_path:
    description: The systemctl to run (C(--systemctl)).
    type: str
    default: systemctl
  root:
    description:
      - Install under this directory (an image being built, C(--root)); systemctl runs only as C(--root=).
    type: path
  config_path:
    description:
      - The config file written into ExecStart (C(--config-path)); default the one llmctl reads (O(config)).
      - Set it when O(config) is a staged copy of the config (the llmctl.fleet.host role does in check mode).
    type: path
  exec_path:
    description: The llmctl executable written into ExecStart (C(--llmctl)); default the host's llmctl.
    type: path
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
- name: Units for the services in /etc/llmctl/config.yaml, enabled and started
  become: true
  llmctl.fleet.units:
    mode: system
    enable: true
    now: true

- name: Write the unit files only (no systemd here)
  llmctl.fleet.units:
    mode: user
    systemctl: false
"""

RETURN = r"""
files:
  description: The rendered files (C(name), C(kind), C(install_path), C(service)), as C(llmctl systemd render --json) lists them.
  returned: always
  type: list
  elements: dict
written:
  description: Paths written (in check mode, that would be written).
  returned: always
  type: list
  elements: str
unchanged:
  description: Paths that already held the rendered bytes.
  returned: always
  type: list
  elements: str
removed:
  description: llmctl's unit files no longer rendered by the config, removed (or that would be).
  returned: always
  type: list
  elements: str
commands:
  description: The systemctl and systemd-sysusers commands run (or, when none ran, that would have run).
  returned: always
  type: list
  elements: list
commands_run:
  description: Whether the commands ran.
  returned: always
  type: bool
units_state:
  description: With O(enable), each unit to enable and what C(systemctl is-enabled) / C(is-active) said before the task.
  returned: when O(enable) and O(systemctl)
  type: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.llmctl.fleet.plugins.module_utils.llmctl import Llmctl, common_spec

ENABLED = ("enabled", "static", "alias", "indirect")
ACTIVE = ("active", "activating", "reloading")


def read(path):
    try:
        with open(path, "r") as fh:
            return fh.read()
    except (IOError, OSError):
        return ""


def enable_command(commands):
    """(systemctl prefix, units) of the `enable` command in install's plan, or (None, [])."""
    for cmd in commands:
        if "enable" in cmd:
            i = cmd.index("enable")
            return cmd[:i], [a for a in cmd[i + 1 :] if not a.startswith("-")]
    return None, []


def unit_states(module, prefix, units, now):
    """What systemctl says about each unit now; and whether enable (--now) would change anything."""
    states, pending = {}, False
    for unit in units:
        rc, out, err = module.run_command(list(prefix) + ["is-enabled", unit], check_rc=False)
        state = {"enabled": (out.strip().splitlines() or [""])[0]}
        pending = pending or state["enabled"] not in ENABLED
        if now:
            rc, out, err = module.run_command(list(prefix) + ["is-active", unit], check_rc=False)
            state["active"] = (out.strip().splitlines() or [""])[0]
            pending = pending or state["active"] not in ACTIVE
        states[unit] = state
    return states, pending


def file_diffs(rendered, written, removed):
    by_name = dict((f["name"], f["content"]) for f in rendered)
    diffs = []
    for path in written:
        diffs.append(
            dict(
                before_header=path, after_header=path, before=read(path), after=by_name.get(os.path.basename(path), "")
            )
        )
    for path in removed:
        diffs.append(dict(before_header=path, after_header="%s (removed)" % path, before=read(path), after=""))
    return diffs


def main():
    module = AnsibleModule(
        argument_spec=common_spec(
            enable=dict(type="bool", default=False),
            now=dict(type="bool", default=False),
            systemctl=dict(type="bool", default=True),
            systemctl_path=dict(type="str", default="systemctl"),
            root=dict(type="path"),
            config_path=dict(type="path"),
            exec_path=dict(type="path"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    if p["now"] and not p["enable"]:
        module.fail_json(msg="now: true needs enable: true")
    llmctl = Llmctl(module)
    render_opts = []
    if p["exec_path"]:
        render_opts += ["--llmctl", p["exec_path"]]
    if p["config_path"]:
        render_opts += ["--config-path", p["config_path"]]
    install_opts = list(render_opts) + ["--systemctl", p["systemctl_path"]]
    if p["root"]:
        install_opts += ["--root", p["root"]]
    if p["enable"]:
        install_opts.append("--enable")
    if p["now"]:
        install_opts.append("--now")
    if not p["systemctl"]:
        install_opts.append("--no-systemctl")

    rc, rendered, out, err = llmctl.run(["systemd", "render", "--json"] + render_opts)
    for warning in (rendered or {}).get("warnings", []):
        module.warn(warning)
    files = (rendered or {}).get("files", [])
    rc, plan, out, err = llmctl.run(["systemd", "install", "--dry-run", "--json"] + install_opts)

    result = dict(files=[dict((k, f.get(k)) for k in ("name", "kind", "install_path", "service")) for f in files])
    pending = False
    if p["enable"] and p["systemctl"]:
        prefix, units = enable_command(plan["commands"])
        if prefix is not None:
            states, pending = unit_states(module, prefix, units, p["now"])
            result["units_state"] = states
    changed = bool(plan["written"] or plan["removed"] or pending)
    if module._diff:  # before anything is written: the files as they are now
        result["diff"] = file_diffs(files, plan["written"], plan["removed"])
    outcome = plan
    if changed and not module.check_mode:
        rc, outcome, out, err = llmctl.run(["systemd", "install", "--json"] + install_opts)
    result.update(
        changed=changed,
        written=outcome["written"],
        unchanged=outcome["unchanged"],
        removed=outcome["removed"],
        commands=outcome["commands"],
        commands_run=bool(outcome.get("commands_run")) and outcome is not plan,
    )
    module.exit_json(**result)


if __name__ == "__main__":
    main()
