"""The names of the agent's operations, for the agent (server.py) and its callers alike.

Each stdin line is a request {"op": NAME, ...}; each gets exactly one stdout line, either
{"ok": true, ...} or {"ok": false, "error": text, "errno": n|null, ...}:

  hello                                   -> python, pyroute2 versions, pid, euid
  preflight {state}                       -> problems: [sentence, ...] (nothing changed)
  apply {state}                           -> created_namespaces, created_links; on failure
                                             also object and rolled_back
  teardown {state}                        -> removed_namespaces (idempotent)
  status {state}                          -> namespaces, links, group_links, complete, absent
  probe-listen {nic, nonce}               -> mac (the listener keeps listening)
  probe-send {nic, peer_mac, nonce}       -> foreign_src, foreign_dst
  probe-collect {nonce, timeout}          -> arrived: subset of ["src", "dst"]
  exec {netns, argv, timeout?}            -> exit_status, stdout, stderr
"""

from __future__ import annotations

HELLO = "hello"
PREFLIGHT = "preflight"
APPLY = "apply"
TEARDOWN = "teardown"
STATUS = "status"
PROBE_LISTEN = "probe-listen"
PROBE_SEND = "probe-send"
PROBE_COLLECT = "probe-collect"
EXEC = "exec"

ALL = (HELLO, PREFLIGHT, APPLY, TEARDOWN, STATUS, PROBE_LISTEN, PROBE_SEND, PROBE_COLLECT, EXEC)
