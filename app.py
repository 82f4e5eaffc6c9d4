"""Deploy modal-github-runner on Modal as the public webhook endpoint.

    modal secret create github-secret \
        GITHUB_TOKEN=... WEBHOOK_SECRET=... ALLOWED_REPOS="owner/repo1,owner/repo2" \
        GHA_MODAL_TOKEN_ID=ak-... GHA_MODAL_TOKEN_SECRET=as-...
    modal deploy app.py

The Rust service is compiled inside the image (once; Modal caches the layer), so this file is
all a deployment needs besides the Modal CLI. It runs one container, always on, that serves the
webhook on port 8000 and creates one sandbox per job in the `MODAL_APP_NAME` app (default
`modal-github-runner`). Configuration comes from the `github-secret` Modal secret (and any
other secret named in MGR_EXTRA_SECRETS at deploy time); see README.md for every variable.

The service talks to Modal's API as an external client with its own token pair: put it in the
secret as GHA_MODAL_TOKEN_ID / GHA_MODAL_TOKEN_SECRET (names Modal's runtime does not reserve;
MODAL_TOKEN_ID / MODAL_TOKEN_SECRET work too).
"""

import os
import pathlib
import subprocess

import modal

ROOT = pathlib.Path(__file__).parent
SERVICE_APP_NAME = os.environ.get("MGR_SERVICE_APP_NAME", "modal-github-runner-service")
SECRET_NAMES = ["github-secret"] + [s for s in os.environ.get("MGR_EXTRA_SECRETS", "").split(",") if s.strip()]
RUST_TOOLCHAIN = "1.95.0"
PORT = 8000
BINARY = "/usr/local/bin/modal-github-runner"

# Sources only: build output, VCS data and local state stay out of the image.
IGNORE = ["target", ".git", ".venv*", "**/__pycache__", "*.db", "*.db-*"]

image = (
    modal.Image.debian_slim(python_version="3.12")
    .apt_install("curl", "ca-certificates", "build-essential", "pkg-config")
    .run_commands(
        "curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal "
        f"--default-toolchain {RUST_TOOLCHAIN}"
    )
    .add_local_dir(ROOT, "/src", copy=True, ignore=IGNORE)
    .run_commands(
        "cd /src && /root/.cargo/bin/cargo build --release --locked "
        f"&& cp target/release/modal-github-runner {BINARY} && rm -rf target /root/.cargo/registry"
    )
)

app = modal.App(SERVICE_APP_NAME)


def service_environment(inherited: dict) -> dict:
    """The service's environment: the secrets, with Modal-runtime variables cleaned up."""
    env = dict(inherited)
    for ours, modals in (("GHA_MODAL_TOKEN_ID", "MODAL_TOKEN_ID"), ("GHA_MODAL_TOKEN_SECRET", "MODAL_TOKEN_SECRET")):
        if env.get(ours):
            env[modals] = env[ours]
    # Inside a Modal container MODAL_SERVER_URL may point at the container-only endpoint; the
    # service is an external client, so it uses the public API unless told otherwise.
    env.pop("MODAL_SERVER_URL", None)
    if env.get("MGR_MODAL_SERVER_URL"):
        env["MODAL_SERVER_URL"] = env["MGR_MODAL_SERVER_URL"]
    env.setdefault("BACKEND", "modal")
    env.setdefault("PORT", str(PORT))
    env.setdefault("LOG_FORMAT", "json")
    # The store is a cache of GitHub and Modal state; after a container restart the
    # reconciler rebuilds what matters from them.
    env.setdefault("DATABASE_URL", "sqlite:///tmp/modal-github-runner.db")
    return env


@app.function(
    image=image,
    secrets=[modal.Secret.from_name(name) for name in SECRET_NAMES],
    min_containers=1,
    max_containers=1,
    timeout=86400,
)
@modal.concurrent(max_inputs=1000)
@modal.web_server(port=PORT, startup_timeout=60)
def webhook():
    """GitHub's webhook URL is this endpoint's URL (POST / and /webhook both work)."""
    subprocess.Popen([BINARY, "serve"], env=service_environment(dict(os.environ)))
