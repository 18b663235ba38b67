"""The fake Grid'5000 held to python-grid5000 used as EnOSlib and users' scripts use it.

omnibed's tests prove the fake answers omnibed's calls; these make the calls omnibed does not
(the reference API walked from the root, site and cluster status, the deployment list) in
the shape python-grid5000 sends them, and read the answers as its users do.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from grid5000 import Grid5000

from tests.fakes.grid5000 import FakeGrid5000

SITE, CLUSTER = "nancy", "gros"


@pytest.fixture
def api(fake: FakeGrid5000) -> Grid5000:
    return Grid5000(uri=fake.url, username=fake.username, password=fake.password)


def _until(check: Callable[[], Any], what: str, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"the fake never got to: {what}")


def test_reference_api_is_walked_from_the_root(api: Grid5000, fake: FakeGrid5000) -> None:
    assert SITE in [site.uid for site in api.sites.list()]
    site = api.sites[SITE]
    assert CLUSTER in [cluster.uid for cluster in site.clusters.list()]
    nodes = site.clusters[CLUSTER].nodes.list()
    assert len(nodes) == fake.nodes_per_cluster
    assert all(any(a["mounted"] for a in node.network_adapters) for node in nodes)


def test_site_and_cluster_status_show_who_holds_each_node(api: Grid5000) -> None:
    site = api.sites[SITE]
    status = site.status.list()
    own = {f"{CLUSTER}-{n}.{SITE}.grid5000.fr" for n in (1, 2, 3)}
    assert own <= set(status.nodes) and status.disks == {}
    assert {status.nodes[node]["soft"] for node in own} == {"free"}
    assert {vlan["soft"] for vlan in status.vlans.values()} == {"free"}
    cluster_status = site.clusters[CLUSTER].status.list()
    assert set(cluster_status.nodes) == own and not hasattr(cluster_status, "vlans")

    job = site.jobs.create({"name": "status-probe", "command": "sleep 3600",
                            "resources": f"{{cluster='{CLUSTER}'}}/nodes=2,walltime=1:00:00"})
    _until(lambda: (job.refresh(), job.state == "running")[1], "a running job")
    busy = site.clusters[CLUSTER].status.list().nodes
    held = {node for node, entry in busy.items() if entry["soft"] == "busy"}
    assert held == set(job.assigned_nodes)
    for node in held:
        assert [r["uid"] for r in busy[node]["reservations"]] == [job.uid]
        assert busy[node]["free_slots"] == 0 and busy[node]["busy_slots"] > 0
    job.delete()


def test_jobs_are_listed_filtered_and_deleted_as_python_grid5000_asks(
    api: Grid5000, fake: FakeGrid5000
) -> None:
    site = api.sites[SITE]
    job = site.jobs.create({"name": "lister", "command": "sleep 3600", "types": ["deploy"],
                            "resources": f"{{cluster='{CLUSTER}'}}/nodes=1,walltime=0:30:00"})
    live = "waiting,launching,running"
    listed = site.jobs.list(state=live, user=fake.username, name="lister")
    assert [j.uid for j in listed] == [job.uid]
    assert site.jobs.list(state="terminated,error", name="lister") == []
    _until(lambda: (job.refresh(), job.state == "running")[1], "a running job")
    job.delete()
    _until(lambda: site.jobs.list(state=live, name="lister") == [], "the job gone")


def test_deployments_are_listed_newest_first_and_filtered(
    api: Grid5000, fake: FakeGrid5000
) -> None:
    site = api.sites[SITE]
    job = site.jobs.create({"name": "deployer", "command": "sleep 3600", "types": ["deploy"],
                            "resources": f"{{cluster='{CLUSTER}'}}/nodes=2,walltime=1:00:00"})
    _until(lambda: (job.refresh(), job.state == "running")[1], "a running job")
    assert site.deployments.list() == []
    made = [site.deployments.create({"nodes": [node], "environment": "debian12-min",
                                     "key": "ssh-ed25519 AAAA user@laptop"})
            for node in job.assigned_nodes]
    newest_first = [d.uid for d in site.deployments.list()]
    assert newest_first == [d.uid for d in reversed(made)]
    assert [d.uid for d in site.deployments.list(reverse="true")] == [d.uid for d in made]
    assert [d.uid for d in site.deployments.list(limit=1, offset=1)] == [made[0].uid]
    # the deployments end one after the other: wait for both, not for the first
    def finished() -> list:
        done = site.deployments.list(status="terminated")
        return done if len(done) == len(made) else []

    done = _until(finished, "both deployments finished")
    assert {d.uid for d in done} == {d.uid for d in made}
    assert all(d.user_uid == fake.username for d in done)
    assert site.deployments.list(user="someone-else") == []
    assert api.sites["grenoble"].deployments.list() == []
    job.delete()
