"""Run code in a kernel of a running workstation through the Jupyter server's REST API and kernel websocket.

The real protocol, as JupyterLab speaks it: POST /api/kernels, then execute_request messages on
/api/kernels/<id>/channels. Every wait has a timeout; the kernel is deleted afterwards.
"""
from __future__ import annotations

import json
import re
import time
import uuid
from dataclasses import dataclass, field

import requests
import websocket
from jupyter_client.session import Session


@dataclass
class Execution:
    stdout: str = ""
    stderr: str = ""
    error: str = ""
    outputs: list[dict] = field(default_factory=list)


def run_code(base_url: str, server_prefix: str, token: str, code: str, timeout: float = 120) -> Execution:
    """Start a kernel in the server at ``base_url + server_prefix``, run ``code``, delete the kernel."""
    api = base_url.rstrip("/") + server_prefix.rstrip("/") + "/api/kernels"
    headers = {"Authorization": f"token {token}"}
    r = requests.post(api, headers=headers, json={"name": "python3"}, timeout=60)
    r.raise_for_status()
    kernel_id = r.json()["id"]
    try:
        ws_url = api.replace("http://", "ws://", 1) + f"/{kernel_id}/channels?session_id={uuid.uuid4().hex}"
        ws = websocket.create_connection(ws_url, header=[f"Authorization: token {token}"], timeout=timeout)
        try:
            session = Session(key=b"", username="test")
            msg = session.msg("execute_request", {"code": code, "silent": False, "store_history": False,
                                                  "user_expressions": {}, "allow_stdin": False,
                                                  "stop_on_error": True})
            msg_id = msg["header"]["msg_id"]
            msg["channel"] = "shell"
            ws.send(json.dumps(msg, default=str))
            result = Execution()
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                reply = json.loads(ws.recv())
                if reply.get("parent_header", {}).get("msg_id") != msg_id:
                    continue
                kind = reply["msg_type"]
                content = reply["content"]
                if kind == "stream":
                    if content["name"] == "stdout":
                        result.stdout += content["text"]
                    else:
                        result.stderr += content["text"]
                elif kind == "error":
                    result.error = f"{content['ename']}: {content['evalue']}"
                elif kind in ("execute_result", "display_data"):
                    result.outputs.append(content["data"])
                elif kind == "status" and content["execution_state"] == "idle":
                    return result
            raise TimeoutError(f"kernel did not finish within {timeout} s")
        finally:
            ws.close()
    finally:
        requests.delete(f"{api}/{kernel_id}", headers=headers, timeout=30)


def run_in_terminal(base_url: str, server_prefix: str, token: str, command: str, timeout: float = 60) -> str:
    """Open a JupyterLab terminal (POST /api/terminals, terminado websocket), type ``command`` and return what the
    terminal printed between two markers; the terminal is deleted afterwards."""
    api = base_url.rstrip("/") + server_prefix.rstrip("/")
    headers = {"Authorization": f"token {token}"}
    r = requests.post(api + "/api/terminals", headers=headers, timeout=60)
    r.raise_for_status()
    name = r.json()["name"]
    marker = uuid.uuid4().hex[:8]
    try:
        ws = websocket.create_connection(api.replace("http://", "ws://", 1) + f"/terminals/websocket/{name}",
                                         header=[f"Authorization: token {token}"], timeout=timeout)
        try:
            # The markers are printed by the shell, so the echo of the typed line does not count.
            ws.send(json.dumps(["stdin", f"printf '%s\\n' B{marker}; {command}; printf '%s\\n' E{marker}\r"]))
            text = ""
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                kind, *payload = json.loads(ws.recv())
                if kind == "stdout":
                    text += payload[0]
                    # Strip terminal control sequences (bash's bracketed-paste switches surround each command).
                    plain = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07", "", text).replace("\r", "")
                    lines = [line.strip() for line in plain.split("\n")]
                    if f"E{marker}" in lines:
                        return "\n".join(lines[lines.index(f"B{marker}") + 1:lines.index(f"E{marker}")])
            raise TimeoutError(f"terminal did not finish within {timeout} s: {text[-500:]!r}")
        finally:
            ws.close()
    finally:
        requests.delete(f"{api}/api/terminals/{name}", headers=headers, timeout=30)
