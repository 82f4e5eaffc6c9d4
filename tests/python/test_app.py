"""app.py is a valid Modal app for the installed `modal` client (imported, never deployed)."""

import importlib.util
import os
import pathlib
import subprocess
import sys
import time
import tomllib
import unittest
from unittest import mock

import modal

ROOT = pathlib.Path(__file__).resolve().parents[2]


def load_app_module():
    spec = importlib.util.spec_from_file_location("mgr_app", ROOT / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class AppFileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.module = load_app_module()

    def test_it_defines_a_modal_app_with_the_webhook_function(self):
        self.assertIsInstance(self.module.app, modal.App)
        self.assertEqual(self.module.app.name, "modal-github-runner-service")
        # Decorating turned the function into a Modal Function bound to the app.
        self.assertIsInstance(self.module.webhook, modal.Function)

    def test_the_webhook_serves_the_service_port(self):
        self.assertEqual(self.module.PORT, 8000)
        self.assertEqual(self.module.service_environment({})["PORT"], "8000")

    def test_the_image_is_a_modal_image_built_from_the_sources(self):
        self.assertIsInstance(self.module.image, modal.Image)
        self.assertIn("target", self.module.CRATE_IGNORE)

    def test_the_original_secret_name_is_used(self):
        self.assertEqual(self.module.SECRET_NAMES[0], "github-secret")

    def test_the_service_environment_maps_the_modal_token_and_drops_the_container_url(self):
        env = self.module.service_environment(
            {
                "GHA_MODAL_TOKEN_ID": "ak-1",
                "GHA_MODAL_TOKEN_SECRET": "as-1",
                "MODAL_SERVER_URL": "unix:///container",
                "GITHUB_TOKEN": "t",
            }
        )
        self.assertEqual(env["MODAL_TOKEN_ID"], "ak-1")
        self.assertEqual(env["MODAL_TOKEN_SECRET"], "as-1")
        self.assertNotIn("MODAL_SERVER_URL", env)
        self.assertEqual(env["BACKEND"], "modal")
        self.assertEqual(env["PORT"], "8000")
        self.assertEqual(env["GITHUB_TOKEN"], "t")

    def test_an_explicit_server_url_override_is_kept(self):
        env = self.module.service_environment({"MGR_MODAL_SERVER_URL": "https://api.modal.com:443"})
        self.assertEqual(env["MODAL_SERVER_URL"], "https://api.modal.com:443")


class RecordingImage:
    """Stands in for `modal.Image`: records every builder call and returns itself."""

    def __init__(self):
        self.steps = []

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.steps.append((name, args, kwargs))
            return self

        return record


class ImageLayersTest(unittest.TestCase):
    """The image copies only what the service's build reads, dependencies first."""

    @classmethod
    def setUpClass(cls):
        cls.module = load_app_module()
        cls.steps = cls.module.build_image(RecordingImage()).steps

    def copies(self):
        """(step index, path relative to the repository, ignore patterns) of every copy."""
        out = []
        for index, (name, args, kwargs) in enumerate(self.steps):
            if name in ("add_local_file", "add_local_dir"):
                self.assertTrue(kwargs.get("copy"), f"{name}{args} must be copy=True to run steps after it")
                local = pathlib.Path(args[0]).resolve().relative_to(ROOT).as_posix()
                out.append((index, local, kwargs.get("ignore", [])))
        return out

    def uploaded_files(self):
        """Every file the copies upload, as Modal selects them (its pattern matcher)."""
        files = set()
        for _, local, ignore in self.copies():
            path = ROOT / local
            if path.is_file():
                files.add(local)
                continue
            matcher = modal.FilePatternMatcher(*ignore)
            for root, _, names in os.walk(path):
                for name in names:
                    relative = pathlib.Path(root, name).relative_to(path)
                    if not matcher(relative):
                        files.add(f"{local}/{relative.as_posix()}")
        return files

    def build_steps(self):
        return [i for i, (name, args, _) in enumerate(self.steps) if name == "run_commands" and "cargo build" in args[0]]

    def test_the_workspace_members_and_the_service_path_dependencies_are_listed(self):
        workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())
        self.assertEqual(sorted(workspace["workspace"]["members"]), sorted(self.module.WORKSPACE_MEMBERS))
        paths = {name: dep.get("path") for name, dep in workspace["workspace"]["dependencies"].items() if isinstance(dep, dict)}
        service = tomllib.loads((ROOT / self.module.SERVICE_CRATE / "Cargo.toml").read_text())
        needed = {paths[name] for name in service["dependencies"] if paths.get(name)}
        self.assertEqual(needed, set(self.module.DEPENDENCY_CRATES))

    def test_only_the_manifests_and_the_crates_the_service_builds_are_copied(self):
        copied = {local for _, local, _ in self.copies()}
        manifests = {f"{m}/Cargo.toml" for m in self.module.WORKSPACE_MEMBERS}
        expected = {"Cargo.toml", "Cargo.lock", "crates/service"} | manifests | set(self.module.DEPENDENCY_CRATES)
        self.assertEqual(copied, expected)

    def test_editing_the_readme_app_py_or_tests_changes_no_copied_file(self):
        files = self.uploaded_files()
        self.assertIn("crates/service/src/main.rs", files)
        self.assertIn("crates/modal-proto/proto/modal.proto", files)
        self.assertIn("crates/modal-proto/build.rs", files)
        for untouched in ("README.md", "app.py", "tests/python/test_app.py", "docs/design.md", "crates/fakes/src/lib.rs"):
            self.assertNotIn(untouched, files)
        self.assertFalse([f for f in files if f.startswith("crates/service/tests/")], "the service's tests are copied")

    def test_dependencies_are_compiled_in_a_layer_before_the_service_sources_are_copied(self):
        builds = self.build_steps()
        self.assertEqual(len(builds), 2, self.steps)
        service_copy = next(i for i, local, _ in self.copies() if local == self.module.SERVICE_CRATE)
        other_copies = [i for i, local, _ in self.copies() if local != self.module.SERVICE_CRATE]
        self.assertLess(max(other_copies), builds[0])
        self.assertLess(builds[0], service_copy)
        self.assertLess(service_copy, builds[1])
        self.assertEqual(builds[1], len(self.steps) - 1, "the service build is the last layer")
        dependencies = self.steps[builds[0]][1][0]
        self.assertIn("--locked", dependencies)
        self.assertIn("src/main.rs", dependencies, "the service gets a placeholder main")
        final = self.steps[builds[1]][1][0]
        self.assertIn("touch", final, "cargo must not keep the placeholder build")
        self.assertIn(self.module.BINARY, final)


# Loads app.py, starts a child from argv[2], watches it, then waits much longer than the
# child lives: only the watcher can end this process early, with the child's status.
WATCHED = """
import importlib.util, subprocess, sys, time
spec = importlib.util.spec_from_file_location("mgr_app", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
child = subprocess.Popen([sys.executable, "-c", sys.argv[2]])
module.exit_with(child)
time.sleep(20)
print("the container outlived the service")
"""


class ServiceExitTest(unittest.TestCase):
    """When the service exits, the container (the Python process) exits too."""

    def test_the_webhook_function_watches_the_service_it_starts(self):
        module = load_app_module()
        started = mock.sentinel.service
        with (
            mock.patch.object(module.subprocess, "Popen", return_value=started) as popen,
            mock.patch.object(module, "exit_with") as exit_with,
        ):
            module.webhook.local()
        self.assertEqual(popen.call_args.args[0], [module.BINARY, "serve"])
        exit_with.assert_called_once_with(started)

    def watch(self, child_code):
        started = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-c", WATCHED, str(ROOT / "app.py"), child_code],
            capture_output=True,
            text=True,
            timeout=40,
        )
        return done, time.monotonic() - started

    def test_the_container_exits_with_the_status_of_the_service_when_it_exits(self):
        done, elapsed = self.watch("import time; time.sleep(0.5); raise SystemExit(3)")
        self.assertEqual(done.returncode, 3, done.stderr)
        self.assertIn("modal-github-runner exited with status 3", done.stderr)
        self.assertNotIn("outlived", done.stdout)
        self.assertLess(elapsed, 15)

    def test_a_service_killed_by_a_signal_or_stopping_cleanly_still_ends_the_container(self):
        for code in ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", "raise SystemExit(0)"):
            with self.subTest(code=code):
                done, _ = self.watch(code)
                self.assertEqual(done.returncode, 1, done.stderr)
                self.assertIn("stopping the container", done.stderr)


POSTGRES = "postgres://mgr:pw@db.example:5432/mgr"


class ReplicasTest(unittest.TestCase):
    """MIN_CONTAINERS / MAX_CONTAINERS at deploy time; several only on PostgreSQL."""

    @classmethod
    def setUpClass(cls):
        cls.module = load_app_module()

    def test_without_settings_one_container_is_always_on(self):
        self.assertEqual(self.module.replicas({}), (1, 1))
        self.assertEqual((self.module.MIN_CONTAINERS, self.module.MAX_CONTAINERS), (1, 1))

    def test_several_containers_are_deployed_on_a_postgres_store(self):
        for url in (POSTGRES, "postgresql://mgr@db/mgr?sslmode=require"):
            with self.subTest(url=url):
                env = {"MIN_CONTAINERS": "2", "MAX_CONTAINERS": "3", "DATABASE_URL": url}
                self.assertEqual(self.module.replicas(env), (2, 3))
        self.assertEqual(self.module.replicas({"MIN_CONTAINERS": "2", "DATABASE_URL": POSTGRES}), (2, 2))

    def test_several_containers_without_postgres_are_refused_with_what_to_do(self):
        for env in (
            {"MAX_CONTAINERS": "2"},
            {"MIN_CONTAINERS": "2"},
            {"MAX_CONTAINERS": "2", "DATABASE_URL": "sqlite:///tmp/x.db"},
        ):
            with self.subTest(env=env):
                with self.assertRaises(self.module.ReplicaError) as refused:
                    self.module.replicas(env)
                self.assertIn("DATABASE_URL=postgres://", str(refused.exception))
                self.assertIn("MAX_CONTAINERS=1", str(refused.exception))

    def test_counts_that_are_not_whole_numbers_from_1_to_100_or_out_of_order_are_refused(self):
        for env, words in (
            ({"MAX_CONTAINERS": "two"}, "whole number"),
            ({"MIN_CONTAINERS": "0"}, "from 1 to 100"),
            ({"MAX_CONTAINERS": "101", "DATABASE_URL": POSTGRES}, "from 1 to 100"),
            ({"MIN_CONTAINERS": "3", "MAX_CONTAINERS": "2", "DATABASE_URL": POSTGRES}, "below"),
        ):
            with self.subTest(env=env):
                with self.assertRaises(self.module.ReplicaError) as refused:
                    self.module.replicas(env)
                self.assertIn(words, str(refused.exception))

    def test_the_deployed_function_gets_the_counts_from_the_deploying_environment(self):
        env = {"MIN_CONTAINERS": "2", "MAX_CONTAINERS": "3", "DATABASE_URL": "postgres://"}
        declared = []
        function = modal.App.function

        def recording(app, *args, **kwargs):
            declared.append(kwargs)
            return function(app, *args, **kwargs)

        with mock.patch.dict(os.environ, env), mock.patch.object(modal.App, "function", recording):
            load_app_module()
        self.assertEqual(len(declared), 1)
        self.assertEqual((declared[0]["min_containers"], declared[0]["max_containers"]), (2, 3))

    def test_a_deploy_asking_for_several_containers_on_sqlite_stops_with_the_reason(self):
        env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
        env["MAX_CONTAINERS"] = "2"
        done = subprocess.run(
            [sys.executable, "-c", LOAD, str(ROOT / "app.py")],
            capture_output=True,
            text=True,
            timeout=40,
            env=env,
        )
        self.assertNotEqual(done.returncode, 0)
        self.assertIn("app.py: MAX_CONTAINERS=2 needs a PostgreSQL store", done.stderr)

    def test_a_container_of_a_several_replica_deployment_refuses_to_start_on_sqlite(self):
        refusal = self.module.replica_refusal(self.module.service_environment({"MGR_MAX_CONTAINERS": "2"}))
        self.assertIn("not a postgres:// URL", refusal)
        self.assertIsNone(self.module.replica_refusal({"MGR_MAX_CONTAINERS": "2", "DATABASE_URL": POSTGRES}))
        self.assertIsNone(self.module.replica_refusal(self.module.service_environment({})))

    def test_the_webhook_does_not_start_the_service_when_the_container_must_refuse(self):
        module = load_app_module()
        with (
            mock.patch.dict(os.environ, {"MGR_MAX_CONTAINERS": "2", "DATABASE_URL": "sqlite:///tmp/x.db"}),
            mock.patch.object(module.subprocess, "Popen") as popen,
            mock.patch.object(module.os, "_exit", side_effect=SystemExit(1)) as end,
        ):
            with self.assertRaises(SystemExit):
                module.webhook.local()
        end.assert_called_once_with(1)
        popen.assert_not_called()


LOAD = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("mgr_app", sys.argv[1])
spec.loader.exec_module(importlib.util.module_from_spec(spec))
"""


if __name__ == "__main__":
    unittest.main()
