"""The names of the agent's operations, for the agent (server.py) and its callers alike.

Each stdin line is a request {"op": NAME, ...}; each gets exactly one stdout line, either
{"ok": true, ...} or {"ok": false, "error": text, "errno": n|null, ...}:

  hello                                   -> python, pyroute2 versions, pid, euid
  preflight {state}                       -> problems: [sentence, ...] (nothing changed)
  apply {state}                           -> created_namespaces, created_links; on failure
                                             also object and rolled_back (then forwarding
                                             and routes: vroutes.py)
  teardown {state}                        -> removed_namespaces (idempotent)
  status {state}                          -> namespaces, links, group_links, complete, absent
  probe-listen {nic, nonce}               -> mac (the listener keeps listening)
  probe-send {nic, peer_mac, nonce}       -> foreign_src, foreign_dst
  probe-collect {nonce, timeout}          -> arrived: subset of ["src", "dst"]
  exec {netns, argv, timeout?}            -> exit_status, stdout_base64, stderr_base64
                                             (the output bytes as the program wrote them)
  containers-preflight {state, placed}    -> problems: [sentence, ...] for its container
                                             vnodes (placed: false before the network and
                                             the images are there)
  containers-install {}                   -> problems: [sentence, ...]: why the runtime (crun,
                                             or runc where the cgroup layout refuses crun)
                                             could not be
                                             installed with apt where missing ([]: it is there)
  containers-image {sha256}               -> present (tarball or unpacked), path to upload
                                             the tarball to (in a root-only directory)
  containers-start {state}                -> started: {name: {pid}}; on failure none runs
  containers-status {state}               -> containers: {name: {state, pid, oom_kills,
                                             cpu_usage_ns, ...}}
  containers-exec {name, argv, timeout?}  -> exit_status, stdout_base64, stderr_base64
                                             (inside it)
  containers-remove {names}               -> removed: the names that existed
  shape {viface, direction}               -> problems: [sentence, ...] (kernel features it
                                             lacks: nothing changed); else the direction's
                                             root qdisc now matches the viface's shaping
  link {netns, ifname, up}                -> {}: the vnode's interface is up or down
  timeline-prepare {instance, id, actions}-> problems: [sentence, ...] (kernel features the
                                             shaping lacks: nothing runs); else pid of the
                                             detached runner, waiting (see timeline.py)
  timeline-go {instance, id, start}       -> running: whether the runner was told its start
  timeline-status {instance}              -> timelines: [{id, running, created, start,
                                             actions, log}]
  timeline-cancel {instance, id?}         -> cancelled: the ids of the runners stopped

  vnode-run {action, container, vifaces}  -> run: the vnode's run state after action (stop,
                                             start, freeze, thaw; lifecycle.py); container
                                             is its ContainerSpec, null for a netns only

teardown stops the instance's timelines, then removes its containers (frozen ones too:
the runtime thaws them to kill them), then its network.
"""

from __future__ import annotations

import base64
import subprocess
from typing import Any

HELLO = "hello"
PREFLIGHT = "preflight"
APPLY = "apply"
TEARDOWN = "teardown"
STATUS = "status"
PROBE_LISTEN = "probe-listen"
PROBE_SEND = "probe-send"
PROBE_COLLECT = "probe-collect"
EXEC = "exec"
CONTAINERS_PREFLIGHT = "containers-preflight"
CONTAINERS_INSTALL = "containers-install"
CONTAINERS_IMAGE = "containers-image"
CONTAINERS_START = "containers-start"
CONTAINERS_STATUS = "containers-status"
CONTAINERS_EXEC = "containers-exec"
CONTAINERS_REMOVE = "containers-remove"
SHAPE = "shape"
LINK = "link"
TIMELINE_PREPARE = "timeline-prepare"
TIMELINE_GO = "timeline-go"
TIMELINE_STATUS = "timeline-status"
TIMELINE_CANCEL = "timeline-cancel"
VNODE_RUN = "vnode-run"

ALL = (
    HELLO, PREFLIGHT, APPLY, TEARDOWN, STATUS, PROBE_LISTEN, PROBE_SEND, PROBE_COLLECT, EXEC,
    CONTAINERS_PREFLIGHT, CONTAINERS_INSTALL, CONTAINERS_IMAGE, CONTAINERS_START, CONTAINERS_STATUS,
    CONTAINERS_EXEC, CONTAINERS_REMOVE, SHAPE, LINK, VNODE_RUN, TIMELINE_PREPARE, TIMELINE_GO,
    TIMELINE_STATUS, TIMELINE_CANCEL,
)  # fmt: skip


def exec_reply(done: subprocess.CompletedProcess[bytes]) -> dict[str, Any]:
    """The reply of exec and containers-exec: exit status, and the output bytes unchanged
    (base64, as JSON carries only text)."""
    return {
        "exit_status": done.returncode,
        "stdout_base64": base64.b64encode(done.stdout).decode(),
        "stderr_base64": base64.b64encode(done.stderr).decode(),
    }
