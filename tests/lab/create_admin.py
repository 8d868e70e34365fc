#!/usr/bin/env python3
"""Create a Synapse admin user through the shared-secret registration API.

    create_admin.py --url https://ADDRESS --ca-cert CA --secret-file FILE --user admin --password-file FILE

The password is read from --password-file (created with a random password if
missing), so reruns keep it. An existing user with that name is left as is.
Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import secrets
import ssl
import sys
import urllib.error
import urllib.request
from pathlib import Path


def call(url, context, payload=None):
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, context=context, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as error:
        return error.code, json.load(error)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--ca-cert", required=True)
    parser.add_argument("--secret-file", required=True, type=Path)
    parser.add_argument("--user", default="admin")
    parser.add_argument("--password-file", required=True, type=Path)
    args = parser.parse_args()

    if not args.password_file.exists():
        args.password_file.parent.mkdir(parents=True, exist_ok=True)
        args.password_file.write_text(secrets.token_urlsafe(18))
        args.password_file.chmod(0o600)
    password = args.password_file.read_text().strip()
    shared_secret = args.secret_file.read_text().strip().encode()
    context = ssl.create_default_context(cafile=args.ca_cert)
    endpoint = args.url.rstrip("/") + "/_synapse/admin/v1/register"

    status, body = call(endpoint, context)
    if status != 200:
        sys.exit(f"GET {endpoint} answered {status}: {body}")
    nonce = body["nonce"]
    message = b"\x00".join(part.encode() for part in (nonce, args.user, password, "admin"))
    mac = hmac.new(shared_secret, message, digestmod=hashlib.sha1)
    status, body = call(
        endpoint,
        context,
        {"nonce": nonce, "username": args.user, "password": password, "admin": True, "mac": mac.hexdigest()},
    )
    if status == 200:
        print(f"created admin user {body['user_id']}")
    elif body.get("errcode") == "M_USER_IN_USE":
        print(f"admin user {args.user} exists already")
    else:
        sys.exit(f"registering {args.user} answered {status}: {body}")


if __name__ == "__main__":
    main()
