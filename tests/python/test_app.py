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


if __name__ == "__main__":
    unittest.main()
