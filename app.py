"""Deploy modal-github-runner on Modal as the public webhook endpoint.

    modal secret create github-secret \
        GITHUB_TOKEN=... WEBHOOK_SECRET=... ALLOWED_REPOS="owner/repo1,owner/repo2" \
        GHA_MODAL_TOKEN_ID=ak-... GHA_MODAL_TOKEN_SECRET=as-...
    modal deploy app.py

The Rust service is compiled inside the image (once; Modal caches the layers: the dependencies
are rebuilt only when Cargo.toml, Cargo.lock or modal-proto change, the service only when its
sources do), so this file is all a deployment needs besides the Modal CLI. It runs one
container, always on, that serves the webhook on port 8000 and creates one sandbox per job in
the `MODAL_APP_NAME` app (default `modal-github-runner`); if the service exits, the container
exits with it and Modal starts a new one. Configuration comes from the `github-secret` Modal
secret (and any other secret named in MGR_EXTRA_SECRETS at deploy time); see README.md for every
variable.

Several replicas (README.md, "Several replicas on PostgreSQL"): put DATABASE_URL=postgres://...
in the secret, then deploy with a postgres:// DATABASE_URL exported and the container counts:

    DATABASE_URL=postgres:// MIN_CONTAINERS=2 MAX_CONTAINERS=2 modal deploy app.py

(only the scheme is checked here; the service uses the secret's URL).

The service talks to Modal's API as an external client with its own token pair: put it in the
secret as GHA_MODAL_TOKEN_ID / GHA_MODAL_TOKEN_SECRET (names Modal's runtime does not reserve;
MODAL_TOKEN_ID / MODAL_TOKEN_SECRET work too).
"""

import os
import pathlib
import subprocess
import sys
import threading

import modal

ROOT = pathlib.Path(__file__).parent
SERVICE_APP_NAME = os.environ.get("MGR_SERVICE_APP_NAME", "modal-github-runner-service")
SECRET_NAMES = ["github-secret"] + [s for s in os.environ.get("MGR_EXTRA_SECRETS", "").split(",") if s.strip()]
RUST_TOOLCHAIN = "1.95.0"
PORT = 8000
BINARY = "/usr/local/bin/modal-github-runner"
CARGO = "/root/.cargo/bin/cargo"
SRC = "/src"

# Every member of the Cargo workspace (the root Cargo.toml's `members`): cargo reads each
# one's manifest, and needs a target in each, even to build one package.
WORKSPACE_MEMBERS = ["crates/modal-proto", "crates/service", "crates/fakes", "crates/testkit", "crates/sim"]
# The crate the image builds, and the workspace crates it depends on. The dependencies'
# sources go into the dependency layer; the service's own sources come last.
SERVICE_CRATE = "crates/service"
DEPENDENCY_CRATES = ["crates/modal-proto"]
# Left out of a crate's copy: its tests, build output and local state.
CRATE_IGNORE = ["tests", "benches", "target", "**/__pycache__", "**/*.db", "**/*.db-*"]


def stub_commands() -> str:
    """Shell commands that give every member without its sources a placeholder target, so
    cargo can build the dependencies before the service's sources are there."""
    commands = [f"cd {SRC}"]
    for member in WORKSPACE_MEMBERS:
        if member not in DEPENDENCY_CRATES:
            commands.append(f"mkdir -p {member}/src && touch {member}/src/lib.rs")
    commands.append(f"echo 'fn main() {{}}' > {SERVICE_CRATE}/src/main.rs")
    return " && ".join(commands)


def build_image(base):
    """The service's image, in layers that Modal rebuilds only when their inputs change:

    1. the Rust toolchain;
    2. the workspace's manifests, its lock file and the crates the service depends on,
       with placeholder sources for the rest, and every dependency compiled: rebuilt only
       when a manifest, Cargo.lock or modal-proto changes;
    3. the service's sources, compiled against layer 2's dependencies.

    Nothing else of the repository is copied: editing README.md or app.py rebuilds nothing.
    """
    image = base.apt_install("curl", "ca-certificates", "build-essential", "pkg-config").run_commands(
        "curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal "
        f"--default-toolchain {RUST_TOOLCHAIN}"
    )
    manifests = ["Cargo.toml", "Cargo.lock"] + [f"{member}/Cargo.toml" for member in WORKSPACE_MEMBERS]
    for path in manifests:
        image = image.add_local_file(ROOT / path, f"{SRC}/{path}", copy=True)
    for crate in DEPENDENCY_CRATES:
        image = image.add_local_dir(ROOT / crate, f"{SRC}/{crate}", copy=True, ignore=CRATE_IGNORE)
    build = f"{CARGO} build --release --locked -p modal-github-runner"
    image = image.run_commands(f"{stub_commands()} && {build}")
    image = image.add_local_dir(ROOT / SERVICE_CRATE, f"{SRC}/{SERVICE_CRATE}", copy=True, ignore=CRATE_IGNORE)
    # The copied files may be older than layer 2's placeholder build: touch them so cargo
    # recompiles the service instead of keeping the placeholder.
    return image.run_commands(
        f"cd {SRC} && find {SERVICE_CRATE} -type f -exec touch {{}} + && {build} "
        f"&& cp target/release/modal-github-runner {BINARY}"
    )


class ReplicaError(ValueError):
    """MIN_CONTAINERS / MAX_CONTAINERS that cannot be deployed; the message says what to do."""


POSTGRES_SCHEMES = ("postgres://", "postgresql://")


def is_postgres(url) -> bool:
    return bool(url) and url.startswith(POSTGRES_SCHEMES)


def replicas(env: dict) -> tuple:
    """(min_containers, max_containers) for the webhook function, read at deploy time from
    MIN_CONTAINERS / MAX_CONTAINERS (default 1 and 1: one always-on container).

    More than one container needs PostgreSQL: the default SQLite store lives in each
    container, so every replica would lead alone over its own copy and two of them would
    serve the same jobs. DATABASE_URL is read from the Modal secret inside the container,
    which `modal deploy` cannot see, so the operator exports a postgres:// URL (its scheme is
    enough) when deploying; the container checks the secret's at start (`replica_refusal`).
    """
    low = count(env, "MIN_CONTAINERS")
    high = count(env, "MAX_CONTAINERS", default=max(low, 1))
    if high < low:
        raise ReplicaError(f"MAX_CONTAINERS ({high}) is below MIN_CONTAINERS ({low})")
    if high > 1 and not is_postgres(env.get("DATABASE_URL")):
        raise ReplicaError(
            f"MAX_CONTAINERS={high} needs a PostgreSQL store shared by the replicas: with SQLite "
            "each container has its own database and leads alone. Put DATABASE_URL=postgres://... "
            "in the Modal secret and export DATABASE_URL=postgres:// when running `modal deploy` "
            "(see README.md, \"Several replicas on PostgreSQL\"), or keep MAX_CONTAINERS=1."
        )
    return low, high


def count(env: dict, name: str, default: int = 1) -> int:
    """A container count from the environment: a whole number from 1 to 100."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ReplicaError(f"{name} must be a whole number, got {raw!r}") from None
    if not 1 <= value <= 100:
        raise ReplicaError(
            f"{name} must be from 1 to 100 (the service's loops need one container always on), got {value}"
        )
    return value


def replica_refusal(env: dict):
    """Why the service must not start in this container, or None: deployed for several
    replicas (MGR_MAX_CONTAINERS, set at deploy time) while the secret's DATABASE_URL is not
    PostgreSQL, so each container would keep its own store."""
    high = int(env.get("MGR_MAX_CONTAINERS", "1") or "1")
    if high > 1 and not is_postgres(env.get("DATABASE_URL")):
        return (
            f"deployed with MAX_CONTAINERS={high} but the Modal secret's DATABASE_URL is not a "
            "postgres:// URL: several replicas need one shared PostgreSQL store. Fix the secret "
            "or redeploy with MAX_CONTAINERS=1."
        )
    return None


try:
    MIN_CONTAINERS, MAX_CONTAINERS = replicas(dict(os.environ))
except ReplicaError as e:
    sys.exit(f"app.py: {e}")

image = build_image(modal.Image.debian_slim(python_version="3.12"))

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
    secrets=[modal.Secret.from_name(name) for name in SECRET_NAMES]
    + [modal.Secret.from_dict({"MGR_MAX_CONTAINERS": str(MAX_CONTAINERS)})],
    min_containers=MIN_CONTAINERS,
    max_containers=MAX_CONTAINERS,
    timeout=86400,
)
@modal.concurrent(max_inputs=1000)
@modal.web_server(port=PORT, startup_timeout=60)
def webhook():
    """GitHub's webhook URL is this endpoint's URL (POST / and /webhook both work)."""
    env = service_environment(dict(os.environ))
    refusal = replica_refusal(env)
    if refusal:
        print(f"modal-github-runner not started: {refusal}", file=sys.stderr, flush=True)
        os._exit(1)
    service = subprocess.Popen([BINARY, "serve"], env=env)
    exit_with(service)


def exit_with(child: subprocess.Popen, end=os._exit) -> threading.Thread:
    """Ends this container when `child` (the service) exits, so that Modal starts a new one
    (`min_containers=1`) instead of keeping a container whose web server answers nothing.
    `end` ends the whole process at once (a thread's `sys.exit` would only end the thread);
    the status is the service's, or 1 if it had none (killed by a signal, or 0)."""

    def watch():
        code = child.wait()
        print(
            f"modal-github-runner exited with status {code}; stopping the container so Modal starts a new one",
            file=sys.stderr,
            flush=True,
        )
        end(code if 0 < code < 256 else 1)

    watcher = threading.Thread(target=watch, name="service-watcher", daemon=True)
    watcher.start()
    return watcher
