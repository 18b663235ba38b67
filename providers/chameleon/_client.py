"""The only module touching openstacksdk: Blazar (generic proxy), Nova, Neutron, Glance.

Blazar has no openstacksdk resource classes; its REST API is reached through the
connection's generic proxy for service type ``reservation`` (same keystoneauth session,
catalog and timeouts), which spares the python-blazarclient/osc-lib dependency tree.
Every method returns plain dicts and raises omnibed errors (see :mod:`._errors`).
"""

from __future__ import annotations

from typing import Any

import openstack
from openstack import exceptions as sdk

from omnibed.core.errors import CredentialsError, UsageError
from omnibed.providers.chameleon._credentials import Credentials
from omnibed.providers.chameleon._errors import map_sdk_errors


def _blazar_json(response: Any, action: str) -> Any:
    if response.status_code >= 400:
        try:
            words = response.json().get("error_message") or response.text
        except ValueError:
            words = response.text
        with map_sdk_errors(action):
            raise sdk.HttpException(message=f"Blazar answered {response.status_code}",
                                    response=response, details=words)
    return response.json() if response.content else None


class ChameleonClient:
    """A connection to one Chameleon site (an OpenStack region)."""

    def __init__(self, credentials: Credentials, site: str, api_timeout: float) -> None:
        with map_sdk_errors(f"authenticate to {site} with {credentials.source}"):
            if credentials.cloud is not None:
                conn = openstack.connect(cloud=credentials.cloud, region_name=site,
                                         api_timeout=api_timeout)
            elif credentials.use_environment:
                conn = openstack.connect(region_name=site, api_timeout=api_timeout)
            else:
                settings: dict[str, Any] = {**credentials.settings, "region_name": site,
                                            "api_timeout": api_timeout}
                conn = openstack.connect(load_yaml_config=False, load_envvars=False, **settings)
            conn.authorize()
        self.conn = conn

    # -- Blazar -----------------------------------------------------------------------------
    def create_lease(self, body: dict) -> dict:
        """The new lease; UsageError if the project already has a lease of that name
        (Blazar's 409: someone else's, as omnibed looks its own up by name first)."""
        with map_sdk_errors(f"create the lease {body['name']!r}"):
            response = self.conn.reservation.post("/leases", json=body)
        if response.status_code == 409:
            raise UsageError(
                f"a lease named {body['name']!r} already exists in your Chameleon project"
                " (a teammate's, or one omnibed does not know): choose another reservation"
                " name, or delete that lease in the Chameleon dashboard")
        return _blazar_json(response, f"create the lease {body['name']!r}")["lease"]

    def get_lease(self, lease_id: str) -> dict | None:
        with map_sdk_errors(f"read the lease {lease_id}"):
            response = self.conn.reservation.get(f"/leases/{lease_id}")
        if response.status_code == 404:
            return None
        return _blazar_json(response, f"read the lease {lease_id}")["lease"]

    def leases_named(self, name: str) -> list[dict]:
        with map_sdk_errors("list the leases"):
            response = self.conn.reservation.get("/leases")
        return [x for x in _blazar_json(response, "list the leases")["leases"]
                if x.get("name") == name]

    def update_lease(self, lease_id: str, body: dict) -> dict:
        with map_sdk_errors(f"update the lease {lease_id}"):
            response = self.conn.reservation.put(f"/leases/{lease_id}", json=body)
        return _blazar_json(response, f"update the lease {lease_id}")["lease"]

    def delete_lease(self, lease_id: str) -> None:
        with map_sdk_errors(f"delete the lease {lease_id}"):
            response = self.conn.reservation.delete(f"/leases/{lease_id}")
        if response.status_code != 404:
            _blazar_json(response, f"delete the lease {lease_id}")

    def hosts(self) -> list[dict] | None:
        """Blazar's hosts with their extra capabilities; None when the site's policy keeps
        them from projects (upstream Blazar's default; Chameleon lets projects read them)."""
        with map_sdk_errors("list the Blazar hosts"):
            response = self.conn.reservation.get("/os-hosts")
        if response.status_code == 403:
            return None
        return _blazar_json(response, "list the Blazar hosts")["hosts"]

    def allocated_hosts(self, reservation_id: str) -> list[str] | None:
        """The ids of the Blazar hosts the host reservation holds; None as for `hosts`, or
        when Blazar predates the allocations API (it then reads `allocations` as a host id:
        404)."""
        with map_sdk_errors("list the Blazar host allocations"):
            response = self.conn.reservation.get(
                "/os-hosts/allocations", params={"reservation_id": reservation_id})
        if response.status_code in (403, 404):
            return None
        allocations = _blazar_json(response, "list the Blazar host allocations")["allocations"]
        return [str(x["resource_id"]) for x in allocations if x["reservations"]]

    # -- lookups ----------------------------------------------------------------------------
    def image_id(self, name_or_id: str) -> str:
        with map_sdk_errors(f"find the image {name_or_id!r} (-o image=)"):
            return self.conn.image.find_image(name_or_id, ignore_missing=False).id

    def image(self, name: str) -> dict | None:
        with map_sdk_errors(f"find the image {name!r}"):
            try:
                found = self.conn.image.find_image(name, ignore_missing=False)
            except sdk.NotFoundException:
                return None
        return {"id": found.id, "status": found.status}

    def flavor_id(self, name: str) -> str:
        with map_sdk_errors(f"find the flavor {name!r} (-o flavor=)"):
            return self.conn.compute.find_flavor(name, ignore_missing=False).id

    def network_id(self, name: str) -> str:
        with map_sdk_errors(f"find the network {name!r}"):
            return self.conn.network.find_network(name, ignore_missing=False).id

    # -- Nova -------------------------------------------------------------------------------
    def create_keypair(self, name: str, public_key: str) -> None:
        with map_sdk_errors(f"create the key pair {name!r}"):
            self.conn.compute.create_keypair(name=name, public_key=public_key)

    def delete_keypair(self, name: str) -> None:
        with map_sdk_errors(f"delete the key pair {name!r}"):
            self.conn.compute.delete_keypair(name, ignore_missing=True)

    def create_server(self, name: str, image_id: str, flavor_id: str, network_id: str,
                      key_name: str, hint: str | None, metadata: dict[str, str]) -> str:
        with map_sdk_errors(f"create the server {name!r}"):
            server = self.conn.compute.create_server(
                name=name, image_id=image_id, flavor_id=flavor_id,
                networks=[{"uuid": network_id}], key_name=key_name, metadata=metadata,
                **({"scheduler_hints": {"reservation": hint}} if hint else {}))
        return server.id

    def server(self, server_id: str) -> dict | None:
        with map_sdk_errors(f"read the server {server_id}"):
            try:
                found = self.conn.compute.find_server(server_id, ignore_missing=False)
            except sdk.NotFoundException:
                return None
        return {"id": found.id, "name": found.name, "status": found.status,
                "progress": found.progress, "fault": found.fault or {},
                "addresses": found.addresses or {}, "metadata": found.metadata or {},
                "hypervisor": found.hypervisor_hostname or ""}

    def servers_tagged(self, key: str, value: str) -> list[str]:
        with map_sdk_errors("list the servers"):
            return [s.id for s in self.conn.compute.servers()
                    if (s.metadata or {}).get(key) == value]

    def delete_server(self, server_id: str) -> None:
        with map_sdk_errors(f"delete the server {server_id}"):
            self.conn.compute.delete_server(server_id, ignore_missing=True)

    def snapshot_server(self, server_id: str, name: str) -> str:
        with map_sdk_errors(f"snapshot the server {server_id} (Nova createImage)"):
            return self.conn.compute.create_server_image(server_id, name).id

    # -- Neutron ----------------------------------------------------------------------------
    def ports(self, server_id: str) -> list[dict]:
        with map_sdk_errors(f"list the ports of {server_id}"):
            return [{"id": p.id, "mac_address": p.mac_address, "fixed_ips": p.fixed_ips,
                     "port_security_enabled": p.is_port_security_enabled}
                    for p in self.conn.network.ports(device_id=server_id)]

    def create_floating_ip(self, network_id: str, description: str) -> dict:
        with map_sdk_errors("allocate a floating IP"):
            fip = self.conn.network.create_ip(floating_network_id=network_id,
                                              description=description)
        return {"id": fip.id, "address": fip.floating_ip_address}

    def bind_floating_ip(self, fip_id: str, port_id: str) -> str:
        with map_sdk_errors(f"attach the floating IP {fip_id}"):
            return self.conn.network.update_ip(fip_id, port_id=port_id).floating_ip_address

    def floating_ips_described(self, description: str) -> list[str]:
        with map_sdk_errors("list the floating IPs"):
            return [f.id for f in self.conn.network.ips() if f.description == description]

    def delete_floating_ip(self, fip_id: str) -> None:
        with map_sdk_errors(f"release the floating IP {fip_id}"):
            self.conn.network.delete_ip(fip_id, ignore_missing=True)

    # -- Keystone ---------------------------------------------------------------------------
    def token(self) -> str:
        """A token for tools run on the nodes (cc-snapshot); never log it."""
        with map_sdk_errors("get a token"):
            token = self.conn.auth_token
        if not token:
            raise CredentialsError(
                "Chameleon gave no token for these credentials: check them with"
                " `omnibed doctor -t chameleon`"
            )
        return token
