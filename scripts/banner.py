"""Prints where things are once `make run` has seeded the demo."""

import json
import sys

seed = json.load(open(sys.argv[1]))
base = sys.argv[2]
integration = seed["integration"]
agents = ", ".join(a["username"] for a in seed["agents"])
password = seed["agents"][0]["password"]
admin = seed.get("admin", {})
print(
    f"""
  Agent marketplace, embedded demo (SQLite, in-memory channel layer, in-process jobs)

  Agent app    {base}/app/                 (on a phone or a narrow window; log in as an agent below)
  API docs     {base}/api/docs/            (OpenAPI: {base}/api/schema/)
  Admin        {base}/admin/               login {admin.get("username", "-")} / {admin.get("password", "-")}
  Agents       {agents}, password {password} (token: POST {base}/api/v1/auth/token)
  Demo bot     id {integration["id"]}
               secret {integration["secret"]}
               callbacks land at {integration["callback_url"]} (GET it to see them)
  Try it       make demo-escalation        (in another terminal: a signed escalation as the bot)
  Health       {base}/healthz   {base}/readyz
"""
)
