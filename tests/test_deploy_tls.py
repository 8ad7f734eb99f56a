"""The hub role's self-signed certificate (no ``incloud_tls_cert`` given), without a cluster: the role's own
``openssl req`` task, rendered by Ansible's templating with the role's variables and run here, makes a key only
root can read and a certificate whose subjectAltName is the hub's public name (an IP address or a DNS name), so
browsers and ``requests`` accept it once trusted. tests/test_deploy.py covers the given-certificate path on the
podman cluster; this covers the other branch in seconds."""
from __future__ import annotations

import ipaddress
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from conftest import missing, require_tool

REPO = Path(__file__).resolve().parents[1]


def self_signed_command(public_name: str, etc: Path) -> list[str]:
    """The role's task command for ``public_name``, templated as Ansible would on the head node."""
    if not Path(sys.executable).with_name("ansible-playbook").exists():
        missing("ansible is not installed in this environment (pip install -c constraints.txt 'incloud[deploy]')")
    from ansible.parsing.dataloader import DataLoader
    from ansible.template import Templar

    tasks = yaml.safe_load((REPO / "ansible/roles/hub/tasks/main.yml").read_text())
    task = next(t for t in tasks if t["name"].startswith("Self-signed certificate"))
    assert task["when"] == "incloud_tls_cert | length == 0"
    assert task["args"]["creates"] == "{{ incloud_etc }}/tls/hub.crt", "made once, kept on later runs"
    templar = Templar(loader=DataLoader(), variables={"incloud_etc": str(etc), "incloud_hub_public_name": public_name,
                                                      "incloud_head_address": "10.0.0.1"})
    return shlex.split(templar.template(task["ansible.builtin.command"]))


@pytest.mark.parametrize("name", ["10.89.7.10", "hub.example.org"])
def test_self_signed_certificate_names_the_hub(tmp_path: Path, name: str) -> None:
    from cryptography import x509

    require_tool("openssl")
    (tmp_path / "tls").mkdir(mode=0o700)
    cmd = self_signed_command(name, tmp_path)
    assert cmd[0] == "openssl"
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-500:]
    cert = x509.load_pem_x509_certificate((tmp_path / "tls/hub.crt").read_bytes())
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    if name[0].isdigit():
        assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(name)]
    else:
        assert san.get_values_for_type(x509.DNSName) == [name]
    assert cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value == name
    assert stat.S_IMODE((tmp_path / "tls/hub.key").stat().st_mode) & 0o077 == 0, "the key is readable by others"
